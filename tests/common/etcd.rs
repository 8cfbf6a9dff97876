//! A real etcd (Debian's `etcd-server`) on free loopback ports, for cluster-mode tests. A test that needs
//! etcd fails, never skips, when it cannot start one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`, for `--etcd`.
    pub endpoint: String,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Two different free ports.
fn free_ports() -> (u16, u16) {
    loop {
        let (a, b) = (free_port(), free_port());
        if a != b {
            return (a, b);
        }
    }
}

/// Why etcd did not come up.
enum LaunchError {
    /// It exited, most often because another process took one of its ports between our picking it and
    /// its binding it (tests start etcds in parallel).
    Exited(String),
    /// It runs but did not answer in time.
    Silent(String),
}

impl Etcd {
    /// Starts etcd with its data in `dir` and waits until it answers; picks other ports and tries again
    /// when it exits at once.
    pub fn start(dir: &Path) -> Self {
        const TRIES: usize = 3;
        for attempt in 1..=TRIES {
            let (client_port, peer_port) = free_ports();
            let mut etcd = Self {
                child: None,
                endpoint: format!("http://127.0.0.1:{client_port}"),
                client_port,
                peer_port,
                dir: dir.join("etcd"),
            };
            match etcd.launch() {
                Ok(()) => return etcd,
                Err(LaunchError::Exited(log)) if attempt < TRIES => {
                    eprintln!("etcd exited at start (attempt {attempt}), trying other ports; its log:\n{log}");
                }
                Err(LaunchError::Exited(log) | LaunchError::Silent(log)) => {
                    panic!("etcd did not become healthy; its log:\n{log}")
                }
            }
        }
        unreachable!("the last try returns or panics")
    }

    fn launch(&mut self) -> Result<(), LaunchError> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log_path = self.dir.with_extension("log");
        let log = std::fs::File::create(&log_path).expect("etcd log file");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(&self.dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd: install Debian's etcd-server (`.ci/run` does)");
        self.child = Some(child);
        // The log's last lines, for a failure's message (the test's temporary directory goes with it).
        let tail = || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.healthy() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(LaunchError::Exited(format!("{status}\n{}", tail())));
                }
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(LaunchError::Silent(tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Whether etcd answers `/health` with true.
    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.client_port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    /// Kills etcd (SIGKILL: no goodbye to its clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(LaunchError::Exited(log) | LaunchError::Silent(log)) = self.launch() {
            panic!("etcd did not come back on its ports; its log:\n{log}");
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
