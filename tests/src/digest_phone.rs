//! A phone's REGISTER by hand, for what SIPp cannot do: take a digest challenge from one
//! node and answer it at another (the node that took over), as a phone does when the node
//! that challenged it hands over or dies before its answer arrives.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use md5::{Digest, Md5};
use switchboard_proto::node_config::digest_ha1;
use tokio::net::UdpSocket;

/// How long a node may take to answer one REGISTER.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A seat's phone holding the nonce of a challenge.
pub struct ChallengedPhone {
    socket: UdpSocket,
    extension: String,
    password: String,
    realm: String,
    nonce: String,
}

impl ChallengedPhone {
    /// Sends seat `extension`'s REGISTER to `node` and keeps the nonce of its 401 challenge.
    pub async fn challenged_by(
        node: SocketAddr,
        extension: &str,
        password: &str,
        realm: &str,
    ) -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let mut phone = Self {
            socket,
            extension: extension.to_string(),
            password: password.to_string(),
            realm: realm.to_string(),
            nonce: String::new(),
        };
        let response = phone.register(node, 1, None).await?;
        let status = status_of(&response)?;
        if status != 401 {
            bail!("{extension}'s REGISTER at {node}: {status}, not a challenge:\n{response}");
        }
        phone.nonce = param(&response, "nonce")
            .with_context(|| format!("a challenge without a nonce:\n{response}"))?;
        Ok(phone)
    }

    /// Answers the challenge at `node` (digest, `qop=auth`, nonce-count 1); returns the
    /// status and the whole response.
    pub async fn answer_at(&self, node: SocketAddr) -> Result<(u16, String)> {
        let uri = format!("sip:{}", self.realm);
        let cnonce = format!("{:016x}", rand::random::<u64>());
        let ha1 = digest_ha1(&self.extension, &self.realm, self.password.as_bytes());
        let ha2 = md5_hex(&format!("REGISTER:{uri}"));
        let response = md5_hex(&format!(
            "{ha1}:{}:00000001:{cnonce}:auth:{ha2}",
            self.nonce
        ));
        let authorization = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"{cnonce}\"",
            self.extension, self.realm, self.nonce
        );
        let answer = self.register(node, 2, Some(&authorization)).await?;
        Ok((status_of(&answer)?, answer))
    }

    /// One REGISTER (un-registering its own contact, so that no call rings this socket) and
    /// its final response.
    async fn register(
        &self,
        node: SocketAddr,
        cseq: u32,
        authorization: Option<&str>,
    ) -> Result<String> {
        let local = self.socket.local_addr()?;
        let mut request = format!(
            "REGISTER sip:{realm} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK{branch:016x};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{ext}@{realm}>;tag=phone{ext}\r\n\
             To: <sip:{ext}@{realm}>\r\n\
             Call-ID: challenged-{ext}@{local}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{ext}@{local}>\r\n\
             Expires: 0\r\n",
            realm = self.realm,
            ext = self.extension,
            branch = rand::random::<u64>(),
        );
        if let Some(authorization) = authorization {
            request.push_str(&format!("Authorization: {authorization}\r\n"));
        }
        request.push_str("Content-Length: 0\r\n\r\n");
        self.socket.send_to(request.as_bytes(), node).await?;
        let mut buf = vec![0u8; 65_536];
        loop {
            let (len, _) = tokio::time::timeout(ANSWER_WITHIN, self.socket.recv_from(&mut buf))
                .await
                .with_context(|| format!("no answer from {node} within {ANSWER_WITHIN:?}"))??;
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            // A provisional answer is not the outcome.
            if status_of(&text)? >= 200 {
                return Ok(text);
            }
        }
    }
}

fn status_of(response: &str) -> Result<u16> {
    response
        .strip_prefix("SIP/2.0 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not a SIP response:\n{response}"))
}

/// A quoted parameter of the challenge header (`nonce="…"`).
fn param(response: &str, name: &str) -> Option<String> {
    let start = response.find(&format!("{name}=\""))? + name.len() + 2;
    let end = response.get(start..)?.find('"')? + start;
    response.get(start..end).map(str::to_string)
}

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
