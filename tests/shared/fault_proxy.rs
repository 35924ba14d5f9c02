//! A TCP proxy in front of a real test server that fails it on command, as
//! the network sees a failing server: `hang` (connections accepted, nothing
//! answered: what a SIGSTOPped process looks like), `stop` (connection
//! refused, open connections reset: a stopped process), `restart`, and
//! `throttle(n)` (the next `n` HTTP requests answered `429 Too Many
//! Requests`). In front of a TLS server (`start_tls`) it terminates TLS
//! with the server's own certificate and speaks TLS to the server, so it
//! can throttle there too. Included with `#[path]`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Hang,
}

/// The TLS sides of a proxy in front of a TLS server: the server's own
/// certificate towards clients, the CA that signed it towards the server.
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

impl Tls {
    /// From PEM files: the server's certificate and key, and the CA.
    pub fn from_pem_files(cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path) -> Arc<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        // HTTP/1.1 both ways, so a throttled request can be answered here.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }
}

/// The proxy; dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    tls: Option<Arc<Tls>>,
    mode: watch::Sender<Mode>,
    throttled: Arc<Mutex<u32>>,
    accept: Mutex<Option<JoinHandle<()>>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `upstream`
    /// (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(upstream, None).await
    }

    /// The same in front of a TLS server.
    pub async fn start_tls(upstream: &str, tls: Arc<Tls>) -> Self {
        Self::start_with(upstream, Some(tls)).await
    }

    async fn start_with(upstream: &str, tls: Option<Arc<Tls>>) -> Self {
        let upstream = tokio::net::lookup_host(upstream).await.unwrap().next().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Pass);
        let proxy = FaultProxy {
            addr,
            upstream,
            tls,
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
        let (upstream, tls, mode, throttled, conns) = (
            self.upstream,
            self.tls.clone(),
            self.mode.subscribe(),
            self.throttled.clone(),
            self.conns.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut mode = mode.clone();
                let tls = tls.clone();
                let throttle = {
                    let mut t = throttled.lock().unwrap();
                    let now = *t > 0;
                    *t = t.saturating_sub(1);
                    now
                };
                let conn = tokio::spawn(async move {
                    // A hung server does not even finish a TLS handshake.
                    if !until_passing(&mut mode).await {
                        return;
                    }
                    match tls {
                        None if throttle => too_many_requests(client).await,
                        None => forward(client, upstream, None, mode).await,
                        Some(tls) => {
                            let Ok(client) = tls.acceptor.accept(client).await else {
                                return;
                            };
                            if throttle {
                                too_many_requests(client).await;
                            } else {
                                forward(client, upstream, Some(tls), mode).await;
                            }
                        }
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

    /// How many of the 429s ordered with `throttle` are still to be served.
    pub fn throttle_left(&self) -> u32 {
        *self.throttled.lock().unwrap()
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

async fn too_many_requests(mut client: impl AsyncRead + AsyncWrite + Unpin) {
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

async fn forward<C>(client: C, upstream: SocketAddr, tls: Option<Arc<Tls>>, mode: watch::Receiver<Mode>)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    match tls {
        None => pipe(client, server, mode).await,
        Some(tls) => {
            let name = ServerName::IpAddress(upstream.ip().into());
            let Ok(server) = tls.connector.connect(name, server).await else {
                return;
            };
            pipe(client, server, mode).await;
        }
    }
}

/// Both directions of a connection.
async fn pipe<A, B>(a: A, b: B, mode: watch::Receiver<Mode>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    tokio::join!(copy(ar, bw, mode.clone()), copy(br, aw, mode));
}

/// One direction of a connection, held while the proxy hangs.
async fn copy(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, mut mode: watch::Receiver<Mode>) {
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

/// How a rollout ended, and the wall time from `since` (a fault injected on
/// a real server) to that end. Panics after a minute: a rollout must never
/// be silently stuck.
pub async fn ended(
    rollout: impl std::future::Future<Output = relay::Result<relay::Outcome>>,
    since: std::time::Instant,
) -> (relay::Outcome, std::time::Duration) {
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), rollout)
        .await
        .expect("never silently stuck")
        .unwrap();
    (outcome, since.elapsed())
}
