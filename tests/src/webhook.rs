//! Runs the operator's admission webhook inside the test process and registers it with the
//! test API server for one namespace only, so tests running at once never see each other's
//! webhook.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use switchboard_operator::{metrics::Metrics, server};

use crate::TEST_FIELD_MANAGER;

/// A webhook served by this process and registered for one namespace.
pub struct NamespaceWebhook {
    pub name: String,
    pub addr: SocketAddr,
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl NamespaceWebhook {
    /// Serves the webhook on a free loopback port with a fresh self-signed certificate, and
    /// registers a ValidatingWebhookConfiguration that sends the namespace's CallCenters (and
    /// their scale requests), Queues and Seats to it (`failurePolicy: Fail`: an unreachable webhook rejects).
    pub async fn start(client: &Client, namespace: &str) -> Result<Self> {
        let cert = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .context("generating the webhook certificate")?;
        let cert_pem = cert.cert.pem();
        let key_pem = cert.signing_key.serialize_pem();
        let metrics = Metrics::new()?;
        let (addr, serve) = server::bind_webhook(
            "127.0.0.1:0".parse()?,
            cert_pem.clone().into_bytes(),
            key_pem.into_bytes(),
            metrics,
            Some(client.clone()),
        )
        .await?;
        let task = tokio::spawn(async move {
            if let Err(e) = serve.await {
                eprintln!("test webhook stopped: {e}");
            }
        });
        let name = format!("switchboard-test-{namespace}");
        use base64::Engine;
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(cert_pem);
        let config: ValidatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "validate.switchboard.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "clientConfig": {
                    "url": format!("https://{addr}{}", switchboard_operator::webhook::PATH),
                    "caBundle": ca_bundle,
                },
                "namespaceSelector": {"matchLabels": {"switchboard.dev/test": namespace}},
                "rules": [{
                    "apiGroups": ["switchboard.dev"],
                    "apiVersions": ["v1alpha1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["callcenters", "callcenters/scale", "queues", "seats"],
                    "scope": "Namespaced",
                }],
            }],
        }))?;
        let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        api.patch(
            &name,
            &PatchParams::apply(TEST_FIELD_MANAGER).force(),
            &Patch::Apply(&config),
        )
        .await
        .with_context(|| format!("registering webhook {name}"))?;
        Ok(Self {
            name,
            addr,
            client: client.clone(),
            task,
        })
    }

    /// Unregisters the webhook and stops serving it.
    pub async fn stop(self) -> Result<()> {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        let result = api.delete(&self.name, &Default::default()).await;
        self.task.abort();
        result.with_context(|| format!("deleting webhook {}", self.name))?;
        Ok(())
    }
}
