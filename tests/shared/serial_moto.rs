//! A moto server of a test's own that serves one request at a time.
//!
//! moto's `TransactWriteItems` copies the whole table before it applies a
//! transaction and puts the copy back when one of its conditions fails; the
//! server `scripts/test.sh` starts serves requests on many threads, so a
//! cancelled transaction there can undo another's committed write (seen
//! with the DynamoDB state store: a record write reported done, then gone).
//! DynamoDB itself runs transactions in isolation; served one at a time, so
//! does moto. The server exits when its owner does (it watches its stdin,
//! a pipe the owner holds). Included with `#[path]`.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "
import os, sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
def orphaned():
    sys.stdin.read()
    os._exit(0)
threading.Thread(target=orphaned, daemon=True).start()
run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)
";

pub struct SerialMoto {
    pub endpoint: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl SerialMoto {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("python3")
            .args(["-c", SERVER, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with moto (scripts/test-requirements.txt) runs the serial moto server");
        let stdin = child.stdin.take();
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start on {endpoint}");
            std::thread::sleep(Duration::from_millis(100));
        }
        SerialMoto { endpoint, child, stdin }
    }
}

impl Drop for SerialMoto {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
