//! A server process the suite owns, run under `sh` so that it cannot outlive the test binary:
//! `sh` kills it (`SIGKILL`) when its stdin closes, whether [`stop`] closed it or the test
//! binary exited with the server in a static that is never dropped. In the second case `sh`
//! also removes the server's temporary directory, which no `TempDir` drop will; [`stop`] writes
//! `stop` first, so the directory is kept (for a restart on the same data, and the owner's
//! `TempDir` removes it when dropped).

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `bin args…` under `sh` as described above; `dir` is the server's temporary
/// directory, removed by `sh` when the test binary exits without [`stop`]. Panics when `sh`
/// cannot be spawned.
pub fn spawn(bin: impl AsRef<OsStr>, args: &[impl AsRef<OsStr>], dir: &Path) -> Child {
    let bin = bin.as_ref();
    Command::new("sh")
        .arg("-c")
        .arg(
            r#"bin=$1; shift; "$bin" "$@" & pid=$!; read line; kill -9 $pid; wait $pid; [ "$line" = stop ] || rm -rf "$IDEMPOTENT_TEST_SERVER_DIR""#,
        )
        .env("IDEMPOTENT_TEST_SERVER_DIR", dir)
        .arg("sh")
        .arg(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} under sh: {e}", bin.to_string_lossy()))
}

/// Kills the server (`SIGKILL`: an outage, not a clean shutdown), keeps its directory, and
/// waits for it to exit. Does nothing when `child` is `None` (already stopped).
pub fn stop(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        use std::io::Write as _;
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = stdin.write_all(b"stop\n");
        }
        drop(child.stdin.take());
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    /// The test binary exiting (its end of the pipe closed, no `stop`) kills the server and
    /// removes its directory: a server in a static left `/tmp/.tmpXXXXXX` behind before.
    #[test]
    fn an_exit_without_stop_removes_the_directory() {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        std::fs::write(dir.join("redis.log"), "x").expect("write");
        let mut child = super::spawn("sleep", &["30"], &dir);
        drop(child.stdin.take());
        let status = child.wait().expect("sh exits");
        assert!(status.code().is_some(), "sh exited by itself: {status:?}");
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }

    /// `stop` (an outage, then a restart on the same data) keeps the directory.
    #[test]
    fn stop_keeps_the_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Some(super::spawn("sleep", &["30"], dir.path()));
        super::stop(&mut child);
        assert!(child.is_none());
        assert!(dir.path().exists());
    }
}
