//! UDP and TCP listeners. UDP: one datagram is one message, trimmed to its `Content-Length`.
//! TCP: messages are framed by the blank line and `Content-Length` (RFC 3261 §18.3), with size
//! limits so a peer cannot make the node buffer without bound; responses go back on the same
//! connection. Everything else happens in [`SipServer::handle`].

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use crate::call::{OUTBOUND_QUEUE, Outbound, OutboundLink};

use super::message::{Transport, content_length, end_of_headers};
use super::server::SipServer;

/// Largest header block accepted on a stream (requests from phones are well under 4 KiB).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest body accepted (SDP is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most TCP connections served at once.
pub const MAX_TCP_CONNECTIONS: usize = 4096;
/// A TCP connection with no traffic for this long is closed. Phones keep their registration
/// connection open and refresh within the registration interval (at most an hour).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3700);
/// How often registrations and transactions are swept.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// Why the SIP transport could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen for SIP over UDP on {addr}: {source}")]
    BindUdp { addr: SocketAddr, source: io::Error },
    #[error("cannot listen for SIP over TCP on {addr}: {source}")]
    BindTcp { addr: SocketAddr, source: io::Error },
    #[error("cannot read the local address of the {transport} listener: {source}")]
    LocalAddr {
        transport: Transport,
        source: io::Error,
    },
}

/// The bound sockets, before serving (so the caller can report bind errors and addresses).
pub struct SipListeners {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    udp_addr: SocketAddr,
    tcp_addr: SocketAddr,
}

impl SipListeners {
    pub async fn bind(udp: SocketAddr, tcp: SocketAddr) -> Result<Self, TransportError> {
        let udp_socket = UdpSocket::bind(udp)
            .await
            .map_err(|source| TransportError::BindUdp { addr: udp, source })?;
        let tcp_listener = TcpListener::bind(tcp)
            .await
            .map_err(|source| TransportError::BindTcp { addr: tcp, source })?;
        let udp_addr = udp_socket
            .local_addr()
            .map_err(|source| TransportError::LocalAddr {
                transport: Transport::Udp,
                source,
            })?;
        let tcp_addr = tcp_listener
            .local_addr()
            .map_err(|source| TransportError::LocalAddr {
                transport: Transport::Tcp,
                source,
            })?;
        Ok(Self {
            udp: Arc::new(udp_socket),
            tcp: tcp_listener,
            udp_addr,
            tcp_addr,
        })
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// Serves until the returned future is dropped (the caller selects it against shutdown).
    pub async fn serve(self, server: Arc<SipServer>) {
        let housekeeping = {
            let server = Arc::clone(&server);
            async move {
                let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
                loop {
                    tick.tick().await;
                    server.housekeeping(Instant::now());
                }
            }
        };
        // Messages the B2BUA sends on its own (requests to callees, late responses).
        let (sender, outbound) = mpsc::channel(OUTBOUND_QUEUE);
        server.attach_outbound(OutboundLink {
            sender,
            udp: self.udp_addr,
            tcp: self.tcp_addr,
        });
        let connections = TcpConnections::default();
        tokio::join!(
            serve_udp(Arc::clone(&self.udp), Arc::clone(&server)),
            send_outbound(self.udp, outbound, connections.clone(), Arc::clone(&server)),
            serve_tcp(self.tcp, server, connections),
            housekeeping
        );
    }
}

/// Open TCP connections by peer address, for messages the node sends on its own: a seat
/// registered over TCP is reached on the connection it registered on (RFC 5626 style).
#[derive(Clone, Default)]
struct TcpConnections(Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>);

/// Bytes queued per TCP connection before further messages to it are dropped.
const TCP_SEND_QUEUE: usize = 256;

async fn send_outbound(
    socket: Arc<UdpSocket>,
    mut outbound: mpsc::Receiver<Outbound>,
    connections: TcpConnections,
    server: Arc<SipServer>,
) {
    while let Some(out) = outbound.recv().await {
        match out.transport {
            Transport::Udp => {
                if let Err(error) = socket.send_to(&out.bytes, out.destination).await {
                    warn!(destination = %out.destination, %error, "cannot send SIP over UDP");
                }
            }
            Transport::Tcp => {
                let connection = connections.0.lock().get(&out.destination).cloned();
                if connection.is_none() && out.connect {
                    connect_tcp(out, connections.clone(), Arc::clone(&server));
                    continue;
                }
                let sent = connection.is_some_and(|c| c.try_send(out.bytes).is_ok());
                if !sent {
                    // The node does not open TCP connections to phones: they connect to it.
                    server.count_dropped("tcp_peer_not_connected");
                    warn!(destination = %out.destination, "no open TCP connection to the peer; SIP message dropped");
                }
            }
        }
    }
}

/// Opens a TCP connection to a trunk peer for `out` and serves it like an accepted one (the
/// peer's responses and requests arrive on it). Messages queued while connecting are written
/// once it is up; a failed connect drops them (counted; the call's timers give up).
fn connect_tcp(out: Outbound, connections: TcpConnections, server: Arc<SipServer>) {
    let peer = out.destination;
    let (sender, outbound) = mpsc::channel(TCP_SEND_QUEUE);
    // Queue the first message before anyone else can use the connection.
    let _ = sender.try_send(out.bytes);
    connections.0.lock().insert(peer, sender);
    tokio::spawn(async move {
        match tokio::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(peer)).await {
            Ok(Ok(stream)) => {
                debug!(%peer, "SIP TCP connection opened to a trunk");
                if let Err(error) = serve_connection(stream, peer, &server, outbound).await {
                    debug!(%peer, %error, "SIP TCP connection closed");
                }
            }
            Ok(Err(error)) => {
                server.count_dropped("tcp_connect_failed");
                warn!(%peer, %error, "cannot open a SIP TCP connection to the trunk");
            }
            Err(_) => {
                server.count_dropped("tcp_connect_failed");
                warn!(%peer, "SIP TCP connection to the trunk timed out");
            }
        }
        connections.0.lock().remove(&peer);
    });
}

/// How long opening a TCP connection to a trunk may take.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_udp(socket: Arc<UdpSocket>, server: Arc<SipServer>) {
    // The largest UDP payload; anything bigger cannot arrive in one datagram.
    let mut buf = vec![0u8; 65_535];
    loop {
        let (len, source) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(error) => {
                // ICMP port unreachable from an earlier send surfaces here on some systems;
                // it concerns that peer only, so keep serving.
                debug!(%error, "UDP receive error");
                // Never spin if the socket keeps failing.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(datagram) = buf.get(..len) else {
            continue;
        };
        let Some(message) = trim_datagram(datagram) else {
            server.count_dropped("keepalive_or_truncated");
            continue;
        };
        if let Some(out) = server.handle(message, source, Transport::Udp, Instant::now())
            && let Err(error) = socket.send_to(&out.bytes, out.destination).await
        {
            warn!(destination = %out.destination, %error, "cannot send SIP response over UDP");
        }
    }
}

/// The message in a datagram, cut at its `Content-Length` (RFC 3261 §18.3: extra bytes are
/// discarded). `None` for keep-alives (bare CRLFs) and datagrams shorter than their
/// Content-Length, which cannot be answered reliably.
fn trim_datagram(datagram: &[u8]) -> Option<&[u8]> {
    if datagram.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return None;
    }
    let Some(end) = end_of_headers(datagram) else {
        return Some(datagram);
    };
    match content_length(datagram.get(..end)?) {
        Ok(Some(length)) => datagram.get(..end.checked_add(length)?),
        // No or unreadable Content-Length: let the parser and the server judge the message.
        Ok(None) | Err(_) => Some(datagram),
    }
}

async fn serve_tcp(listener: TcpListener, server: Arc<SipServer>, connections: TcpConnections) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(r) => r,
            Err(error) => {
                // Usually EMFILE: back off briefly instead of spinning.
                warn!(%error, "cannot accept a SIP TCP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            server.count_dropped("tcp_connection_limit");
            warn!(%peer, "too many SIP TCP connections; refusing one");
            continue;
        };
        let server = Arc::clone(&server);
        let (sender, outbound) = mpsc::channel(TCP_SEND_QUEUE);
        connections.0.lock().insert(peer, sender);
        let connections = connections.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, peer, &server, outbound).await {
                debug!(%peer, %error, "SIP TCP connection closed");
            }
            connections.0.lock().remove(&peer);
            drop(permit);
        });
    }
}

/// Why a TCP connection was closed by us.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("header block over {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("body over {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("unreadable Content-Length")]
    BadContentLength,
    #[error("idle for {0:?}")]
    Idle(Duration),
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    server: &SipServer,
    mut outbound: mpsc::Receiver<Vec<u8>>,
) -> Result<(), ConnectionError> {
    let mut framer = StreamFramer::default();
    let mut chunk = vec![0u8; 8192];
    loop {
        let read = tokio::select! {
            read = tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read(&mut chunk)) => {
                read.map_err(|_| ConnectionError::Idle(TCP_IDLE_TIMEOUT))??
            }
            Some(bytes) = outbound.recv() => {
                stream.write_all(&bytes).await?;
                continue;
            }
        };
        if read == 0 {
            return Ok(());
        }
        framer.push(chunk.get(..read).unwrap_or_default());
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::Ping)) => {
                    // RFC 5626 §3.5.1: answer a CRLFCRLF ping with a CRLF pong.
                    stream.write_all(b"\r\n").await?;
                }
                Ok(Some(Frame::Message(message))) => {
                    if let Some(out) = server.handle(&message, peer, Transport::Tcp, Instant::now())
                    {
                        stream.write_all(&out.bytes).await?;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    server.count_dropped(match error {
                        ConnectionError::HeadersTooLarge => "tcp_headers_too_large",
                        ConnectionError::BodyTooLarge => "tcp_body_too_large",
                        _ => "tcp_bad_framing",
                    });
                    // The stream cannot be re-synchronised after a framing error: close it.
                    return Err(error);
                }
            }
        }
    }
}

/// A unit cut from a TCP stream.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A keep-alive `CRLFCRLF`.
    Ping,
    Message(Vec<u8>),
}

/// Cuts SIP messages out of a byte stream.
#[derive(Default)]
struct StreamFramer {
    buffer: Vec<u8>,
}

impl StreamFramer {
    fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, ConnectionError> {
        // CRLFs between messages are keep-alives (RFC 5626 §3.5.1) or padding.
        loop {
            if self.buffer.starts_with(b"\r\n\r\n") {
                self.buffer.drain(..4);
                return Ok(Some(Frame::Ping));
            }
            let leading = self
                .buffer
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            if leading == 0 {
                break;
            }
            if leading == self.buffer.len() && leading < 4 {
                // Possibly the start of a ping: wait for more bytes.
                return Ok(None);
            }
            // A stray line end before a message: discard it.
            self.buffer.drain(..1);
        }
        let Some(end) = end_of_headers(&self.buffer) else {
            if self.buffer.len() > MAX_HEADER_BYTES {
                return Err(ConnectionError::HeadersTooLarge);
            }
            return Ok(None);
        };
        if end > MAX_HEADER_BYTES {
            return Err(ConnectionError::HeadersTooLarge);
        }
        let body = match content_length(self.buffer.get(..end).unwrap_or_default()) {
            Ok(Some(length)) => length,
            // RFC 3261 requires Content-Length on streams; a message without one has no body.
            Ok(None) => 0,
            Err(_) => return Err(ConnectionError::BadContentLength),
        };
        if body > MAX_BODY_BYTES {
            return Err(ConnectionError::BodyTooLarge);
        }
        let total = end + body;
        if self.buffer.len() < total {
            return Ok(None);
        }
        let message: Vec<u8> = self.buffer.drain(..total).collect();
        Ok(Some(Frame::Message(message)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_messages_split_and_joined() {
        let one = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 3\r\n\r\nabc";
        let two = b"OPTIONS sip:y SIP/2.0\r\nl: 0\r\n\r\n";
        let mut stream = Vec::new();
        stream.extend_from_slice(one);
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(two);
        for split in 0..stream.len() {
            let mut framer = StreamFramer::default();
            let mut frames = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                framer.push(part);
                while let Some(frame) = framer.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(
                frames,
                vec![
                    Frame::Message(one.to_vec()),
                    Frame::Ping,
                    Frame::Message(two.to_vec())
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn refuses_oversized_messages() {
        let mut framer = StreamFramer::default();
        framer.push(&vec![b'a'; MAX_HEADER_BYTES + 1]);
        assert!(matches!(
            framer.next_frame(),
            Err(ConnectionError::HeadersTooLarge)
        ));
        let mut framer = StreamFramer::default();
        framer.push(
            format!(
                "OPTIONS sip:x SIP/2.0\r\nContent-Length: {}\r\n\r\n",
                MAX_BODY_BYTES + 1
            )
            .as_bytes(),
        );
        assert!(matches!(
            framer.next_frame(),
            Err(ConnectionError::BodyTooLarge)
        ));
        let mut framer = StreamFramer::default();
        framer.push(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\n");
        assert!(matches!(
            framer.next_frame(),
            Err(ConnectionError::BadContentLength)
        ));
    }

    #[test]
    fn datagrams_are_trimmed_to_content_length() {
        assert_eq!(trim_datagram(b"\r\n\r\n"), None);
        assert_eq!(
            trim_datagram(b"A\r\nContent-Length: 2\r\n\r\nhello"),
            Some(&b"A\r\nContent-Length: 2\r\n\r\nhe"[..])
        );
        assert_eq!(trim_datagram(b"A\r\nContent-Length: 9\r\n\r\nhello"), None);
        assert_eq!(
            trim_datagram(b"A\r\n\r\nhello"),
            Some(&b"A\r\n\r\nhello"[..])
        );
    }

    proptest! {
        #[test]
        fn framer_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut framer = StreamFramer::default();
            for chunk in chunks {
                framer.push(&chunk);
                while let Ok(Some(_)) = framer.next_frame() {}
            }
        }

        #[test]
        fn trim_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = trim_datagram(&bytes);
        }
    }
}
