//! A MariaDB server the suite owns ([`MariaDbServer`]): a data directory made by
//! `mariadb-install-db` in a temporary directory, `mariadbd` on a free loopback port, which a
//! test can SIGKILL and start again on the same data ([`restart`](MariaDbServer::restart): a
//! crash, then InnoDB's recovery). For the fault matrix's "server restarted" cells; the shared
//! test server is never restarted.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::redis_server::free_port;

/// `mariadbd`: on PATH, else `/usr/sbin/mariadbd` (Debian's place, outside a user's PATH).
fn mariadbd() -> Option<PathBuf> {
    let on_path = Command::new("mariadbd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if on_path {
        return Some(PathBuf::from("mariadbd"));
    }
    let sbin = PathBuf::from("/usr/sbin/mariadbd");
    sbin.exists().then_some(sbin)
}

/// Whether the suite can run a MariaDB server of its own (`mariadbd`, `mariadb-install-db` and
/// the `mariadb` client are installed).
pub fn mariadb_server_available() -> bool {
    let runs = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    mariadbd().is_some() && runs("mariadb") && runs("mariadb-install-db")
}

/// A `mariadbd` process the suite owns, on a loopback port, with its data in a temporary
/// directory; root without a password, database `test`. It runs under `sh`, which kills it
/// when its stdin closes: the server dies with the test binary.
pub struct MariaDbServer {
    /// The port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl MariaDbServer {
    /// Creates a data directory, starts the server, waits until it answers and creates the
    /// database `test`. Panics when it cannot (see [`mariadb_server_available`]).
    pub fn start() -> MariaDbServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp dir");
        // Concurrent bootstraps in one test binary collided on temporary tables: one at a time.
        static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = INSTALL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(_one);
        let mut server = MariaDbServer {
            port: free_port(),
            dir,
            child: None,
        };
        server.spawn();
        server.sql("CREATE DATABASE IF NOT EXISTS test");
        server
    }

    /// `mysql://root@127.0.0.1:<port>/test`.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/test", self.port)
    }

    /// Runs `sql` with the `mariadb` client; returns whether it succeeded.
    fn try_sql(&self, sql: &str) -> bool {
        Command::new("mariadb")
            .args([
                "-h",
                "127.0.0.1",
                "-P",
                &self.port.to_string(),
                "-uroot",
                "-e",
            ])
            .arg(sql)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn sql(&self, sql: &str) {
        assert!(self.try_sql(sql), "{sql} failed on port {}", self.port);
    }

    fn spawn(&mut self) {
        let bin = mariadbd().expect("mariadbd is installed");
        let d = self.dir.path();
        let args = [
            "--no-defaults".to_owned(),
            format!("--datadir={}", d.join("data").display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--socket={}", d.join("sock").display()),
            format!("--tmpdir={}", d.join("tmp").display()),
            format!("--pid-file={}", d.join("pid").display()),
            "--user=root".to_owned(),
            "--skip-log-bin".to_owned(),
            "--innodb-buffer-pool-size=16M".to_owned(),
        ];
        let child = crate::supervised::spawn(bin, &args, d);
        self.child = Some(child);
        for _ in 0..400 {
            if self.try_sql("SELECT 1") {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("mariadbd on port {} does not answer", self.port);
    }

    /// SIGKILLs the server and waits for it to exit.
    pub fn stop(&mut self) {
        crate::supervised::stop(&mut self.child);
    }

    /// [`stop`](Self::stop) (a crash), then starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        self.stop();
    }
}
