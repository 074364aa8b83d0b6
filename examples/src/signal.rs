//! Stopping an example binary on Ctrl-C (SIGINT) or SIGTERM (what `timeout`, `docker stop`
//! and systemd send) the same way: both are caught, so the binary cleans up (its temporary
//! SQLite file, its tables with `--cleanup`) and exits on its own, with the shell's code for
//! the signal.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

/// The signal that interrupted the process: 0 none yet, else its number (2 SIGINT, 15
/// SIGTERM).
static INTERRUPTED_BY: AtomicU8 = AtomicU8::new(0);

/// Resolves at the first Ctrl-C (SIGINT) or SIGTERM, noting which for [`interrupted_by`].
/// Both are listened for from its first poll. Errors: a handler that cannot be installed.
pub async fn interruption() -> std::io::Result<()> {
    #[cfg(unix)]
    let signal = {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| 2),
            _ = term.recv() => Ok(15),
        }
    };
    #[cfg(not(unix))]
    let signal = tokio::signal::ctrl_c().await.map(|()| 2);
    INTERRUPTED_BY.store(signal?, Relaxed);
    Ok(())
}

/// The signal [`interruption`] caught, as `(name, exit code)`: `("SIGTERM", 143)`, or
/// `("Ctrl-C", 130)` (128 + the signal's number, as a shell reports a process the signal
/// killed); `None` before any.
pub fn interrupted_by() -> Option<(&'static str, u8)> {
    match INTERRUPTED_BY.load(Relaxed) {
        0 => None,
        15 => Some(("SIGTERM", 143)),
        _ => Some(("Ctrl-C", 130)),
    }
}
