//! A throwaway `redis-server` on a free loopback port, so that `INFO commandstats` counts the
//! benchmark's commands only (no other client shares the server). Stopped when dropped, or
//! when the benchmark's process ends however it ends.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub url: String,
}

impl RedisServer {
    /// Starts `redis-server` (no persistence, `noeviction`) and waits until it answers; `None`
    /// when the binary is not on PATH or does not come up within 10 s.
    pub fn start() -> Option<RedisServer> {
        let on_path = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !on_path {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        // Under `sh`, which kills the server when its stdin closes: an interrupted benchmark
        // (Ctrl-C, a kill) leaves no redis-server behind, though `Drop` never runs.
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"redis-server "$@" & pid=$!; read _ignored; kill -9 $pid; wait $pid"#)
            .arg("sh")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Closing `sh`'s stdin makes it kill the server and exit.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
