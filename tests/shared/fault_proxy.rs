//! A TCP proxy in front of a real test server that fails it on command, as
//! the network sees a failing server: `hang` (connections accepted, nothing
//! answered: what a SIGSTOPped process looks like), `stop` (connection
//! refused, open connections reset: a stopped process), `restart`, and
//! `throttle(n)` (the next `n` HTTP requests answered `429 Too Many
//! Requests`; plain-HTTP servers only). Included with `#[path]`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Hang,
}

/// The proxy; dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    throttled: Arc<Mutex<u32>>,
    accept: Mutex<Option<JoinHandle<()>>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `upstream`
    /// (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let upstream = tokio::net::lookup_host(upstream).await.unwrap().next().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Pass);
        let proxy = FaultProxy {
            addr,
            upstream,
            mode,
            throttled: Arc::new(Mutex::new(0)),
            accept: Mutex::new(None),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.serve(listener);
        proxy
    }

    /// `scheme://127.0.0.1:port` of the proxy.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn serve(&self, listener: TcpListener) {
        let (upstream, mode, throttled, conns) = (
            self.upstream,
            self.mode.subscribe(),
            self.throttled.clone(),
            self.conns.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mode = mode.clone();
                let throttle = {
                    let mut t = throttled.lock().unwrap();
                    let now = *t > 0;
                    *t = t.saturating_sub(1);
                    now
                };
                let conn = tokio::spawn(async move {
                    if throttle {
                        too_many_requests(client).await;
                    } else {
                        forward(client, upstream, mode).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    fn reset_connections(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Forward again.
    pub fn pass(&self) {
        self.mode.send_replace(Mode::Pass);
    }

    /// Accept connections, answer nothing, until `pass`.
    pub fn hang(&self) {
        self.mode.send_replace(Mode::Hang);
    }

    /// Refuse connections and reset the open ones, until `restart`.
    pub fn stop(&self) {
        if let Some(t) = self.accept.lock().unwrap().take() {
            t.abort();
        }
        self.reset_connections();
    }

    /// Listen again on the same port (after `stop`).
    pub async fn restart(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.pass();
        self.serve(listener);
    }

    /// Answer the next `n` connections' requests with 429 (and close the
    /// open connections, so clients open new ones).
    pub fn throttle(&self, n: u32) {
        *self.throttled.lock().unwrap() = n;
        self.reset_connections();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn too_many_requests(mut client: TcpStream) {
    let mut buf = [0u8; 8192];
    let _ = client.read(&mut buf).await;
    let _ = client
        .write_all(b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        .await;
    let _ = client.shutdown().await;
}

/// Wait while the proxy hangs.
async fn until_passing(mode: &mut watch::Receiver<Mode>) -> bool {
    while *mode.borrow_and_update() == Mode::Hang {
        if mode.changed().await.is_err() {
            return false;
        }
    }
    true
}

async fn forward(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if !until_passing(&mut mode).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::join!(copy(cr, sw, mode.clone()), copy(sr, cw, mode));
}

/// One direction of a connection, held while the proxy hangs.
async fn copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else { return };
        if n == 0 || !until_passing(&mut mode).await || to.write_all(&buf[..n]).await.is_err() {
            let _ = to.shutdown().await;
            return;
        }
    }
}

/// A retry policy for fault tests: quick backoff, 1 s per attempt, 5 s in
/// all, so every fault ends in seconds.
pub fn fast_retry() -> relay::RetryPolicy {
    relay::RetryPolicy {
        initial_backoff: std::time::Duration::from_millis(50),
        max_backoff: std::time::Duration::from_millis(400),
        multiplier: 2.0,
        max_attempts: 30,
        attempt_timeout: std::time::Duration::from_secs(1),
        deadline: std::time::Duration::from_secs(5),
    }
}

/// `f`'s result and how long it took.
pub async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, std::time::Duration) {
    let start = std::time::Instant::now();
    let r = f.await;
    (r, start.elapsed())
}
