//! The local stand-ins for Services: TCP endpoints that forward each client
//! connection to the instance currently chosen (the primary for rw, a
//! streaming standby for ro). When the target changes, connections still open
//! to the previous target are closed, so no client keeps writing to an
//! instance that stopped being primary. Does network I/O.

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Where an endpoint forwards to; `None` refuses connections (no eligible instance).
pub type Target = Option<SocketAddr>;

/// A forwarding endpoint bound to a local address.
pub struct Endpoint {
    name: &'static str,
    listener: TcpListener,
    target: watch::Receiver<Target>,
}

impl Endpoint {
    /// Bind `addr`; forward to whatever `target` says.
    pub async fn bind(
        name: &'static str,
        addr: SocketAddr,
        target: watch::Receiver<Target>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            name,
            listener,
            target,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accept and forward until the task is dropped.
    pub async fn serve(self) {
        let Self {
            name,
            listener,
            target,
        } = self;
        loop {
            let (client, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(endpoint = name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let rx = target.clone();
            tokio::spawn(forward(name, client, peer, rx));
        }
    }
}

async fn forward(
    name: &'static str,
    mut client: TcpStream,
    peer: SocketAddr,
    mut target: watch::Receiver<Target>,
) {
    let Some(upstream_addr) = *target.borrow_and_update() else {
        debug!(endpoint = name, %peer, "no target: closing client connection");
        return;
    };
    let mut upstream = match TcpStream::connect(upstream_addr).await {
        Ok(s) => s,
        Err(e) => {
            debug!(endpoint = name, %peer, upstream = %upstream_addr, error = %e, "upstream refused");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        res = copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = res {
                debug!(endpoint = name, %peer, error = %e, "connection ended");
            }
        }
        () = target_moved(&mut target, upstream_addr) => {
            info!(endpoint = name, %peer, from = %upstream_addr, "target moved: closing client connection");
        }
    }
}

/// Resolves when the target is no longer `current` (or the sender is gone).
async fn target_moved(target: &mut watch::Receiver<Target>, current: SocketAddr) {
    loop {
        if *target.borrow_and_update() != Some(current) {
            return;
        }
        if target.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server(tag: u8) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let mut out = vec![tag];
                                out.extend_from_slice(&buf[..n]);
                                if s.write_all(&out).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, h)
    }

    async fn roundtrip(s: &mut TcpStream) -> std::io::Result<u8> {
        s.write_all(b"x").await?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await?;
        Ok(buf[0])
    }

    #[tokio::test]
    async fn endpoint_forwards_to_target_and_closes_connections_when_it_moves() {
        let (a, _ha) = echo_server(b'a').await;
        let (b, _hb) = echo_server(b'b').await;
        let (tx, rx) = watch::channel(Some(a));
        let ep = Endpoint::bind("rw", "127.0.0.1:0".parse().unwrap(), rx)
            .await
            .unwrap();
        let addr = ep.local_addr().unwrap();
        tokio::spawn(ep.serve());

        let mut c1 = TcpStream::connect(addr).await.unwrap();
        assert_eq!(roundtrip(&mut c1).await.unwrap(), b'a');

        tx.send(Some(b)).unwrap();
        // The old connection is closed: reads end within a bounded time.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let mut buf = [0u8; 8];
            loop {
                match c1.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await
        .unwrap();
        assert!(closed);

        let mut c2 = TcpStream::connect(addr).await.unwrap();
        assert_eq!(roundtrip(&mut c2).await.unwrap(), b'b');

        tx.send(None).unwrap();
        let mut c3 = TcpStream::connect(addr).await.unwrap();
        assert!(
            roundtrip(&mut c3).await.is_err(),
            "no target must refuse the client"
        );
    }
}
