//! A tiny UDP echo server for the single-node cluster smoke test.
//!
//! Usage: `udp-echo [PORT]` (default 5060). Binds `0.0.0.0:PORT` and sends every datagram
//! back to its sender unchanged. Logs to stderr. Bad arguments end the program with a
//! message and exit code 2; errors on single datagrams are logged and skipped.

use std::net::UdpSocket;
use std::process::ExitCode;

const DEFAULT_PORT: u16 = 5060;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let port = match args.next() {
        None => DEFAULT_PORT,
        Some(arg) => match arg.parse::<u16>() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("udp-echo: invalid port {arg:?}: {e}");
                eprintln!("usage: udp-echo [PORT]");
                return ExitCode::from(2);
            }
        },
    };
    if args.next().is_some() {
        eprintln!("usage: udp-echo [PORT]");
        return ExitCode::from(2);
    }

    let socket = match UdpSocket::bind(("0.0.0.0", port)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("udp-echo: cannot bind 0.0.0.0:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match socket.local_addr() {
        Ok(addr) => eprintln!("udp-echo: listening on {addr}"),
        Err(_) => eprintln!("udp-echo: listening on 0.0.0.0:{port}"),
    }

    // 64 KiB holds any UDP payload.
    let mut buf = vec![0u8; 65536];
    let mut count: u64 = 0;
    loop {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("udp-echo: receive failed: {e}");
                // Do not spin if the error repeats.
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        count = count.wrapping_add(1);
        let payload = buf.get(..len).unwrap_or_default();
        match socket.send_to(payload, peer) {
            Ok(_) => eprintln!("udp-echo: #{count}: echoed {len} bytes to {peer}"),
            Err(e) => eprintln!("udp-echo: #{count}: cannot answer {peer}: {e}"),
        }
    }
}
