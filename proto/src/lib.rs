//! The gRPC contract between the Switchboard operator and its media nodes.
//!
//! Two packages, compiled at build time without a system `protoc`: `switchboard.node.v1`
//! (`proto/switchboard/node/v1/node.proto`), the operator's control API of a node, and
//! `switchboard.replication.v1` (`proto/switchboard/replication/v1/replication.proto`), the
//! hot-standby stream from the active node to the standby. The operator and the media node
//! depend on this crate, so they cannot drift apart.
//!
//! [`node_config`] is the payload: the YAML inside [`node::v1::ConfigSnapshot::config_yaml`]
//! (and the call center's ConfigMap) is exactly a serialised [`node_config::NodeConfig`], built
//! by the operator and read by the media node.

pub mod node_config;

/// The media node's gRPC control port: plain HTTP/2 (h2c), reached only inside the pod network
/// by the operator. `media-node --control-listen` defaults to it.
pub const CONTROL_PORT: u16 = 9091;

/// Label the active media node of a HotStandby call center sets on its own pod (value
/// [`ROLE_ACTIVE`]) while it holds the center's Lease; the operator's SIP Service selects it,
/// so calls follow the Lease holder.
pub const ROLE_LABEL: &str = "switchboard.dev/role";
/// Value of [`ROLE_LABEL`] on the active node's pod.
pub const ROLE_ACTIVE: &str = "active";

/// Hot-standby replication from the active media node to the standby
/// (`proto/switchboard/replication/v1/replication.proto`).
pub mod replication {
    // Generated: a snapshot and a whole call record are far larger than a heartbeat or a
    // removal key, and boxing them would only move the allocation.
    #[allow(clippy::large_enum_variant)]
    pub mod v1 {
        tonic::include_proto!("switchboard.replication.v1");

        /// Everything but the nonce key, which is a secret.
        impl std::fmt::Debug for Snapshot {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("Snapshot")
                    .field("config_generation", &self.config_generation)
                    .field("registrations", &self.registrations)
                    .field("agents", &self.agents)
                    .field("calls", &self.calls)
                    .field(
                        "nonce_key",
                        &format_args!("({} bytes)", self.nonce_key.len()),
                    )
                    .finish()
            }
        }
    }
}

pub mod node {
    pub mod v1 {
        tonic::include_proto!("switchboard.node.v1");

        impl ConfigSnapshot {
            /// A snapshot of `config_yaml` at `generation`, with its hash filled in.
            pub fn new(generation: i64, config_yaml: Vec<u8>) -> Self {
                let config_hash = super::super::config_hash(&config_yaml);
                Self {
                    generation,
                    config_hash,
                    config_yaml,
                }
            }

            /// Whether `config_hash` matches the bytes: a node refuses a snapshot that does not.
            pub fn is_intact(&self) -> bool {
                super::super::config_hash(&self.config_yaml) == self.config_hash
            }
        }
    }
}

/// Lowercase hex MD5 of a serialized configuration (an integrity check, not a security
/// measure: the channel itself is what must be trusted).
pub fn config_hash(bytes: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::node::v1::*;

    #[test]
    fn a_snapshot_carries_the_hash_of_its_bytes() {
        let snap = ConfigSnapshot::new(7, b"callCenter: campus\n".to_vec());
        assert_eq!(snap.config_hash.len(), 32);
        assert!(snap.is_intact());
        let mut torn = snap.clone();
        torn.config_yaml.truncate(5);
        assert!(!torn.is_intact());
    }
}
