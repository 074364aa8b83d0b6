//! The `fault_worker` protocol: the command lines ([`WorkerCmd`]), what the worker prints, and
//! [`Worker`], a running worker the test drives (waits for its pause points, releases or
//! SIGKILLs it, collects its report).
//!
//! `fault_worker <strategy> <url> <mode…>`, modes:
//! - `once <key> <point|none>`: one call for `<key>`, held at `<point>`: prints `paused <point>`
//!   and waits for a line on stdin (`completed` is after the call returned); prints
//!   `result <outcome>`.
//! - `until-free <key> <ms>`: calls every 20 ms until the answer is not the strategy's busy
//!   answer (or `<ms>` passed); prints `call <ms it took> <outcome>` per call, then
//!   `elapsed <ms>`.
//! - `storm <keys-file> <rounds> <concurrency>`: every key of the file (one per line) `rounds`
//!   times, `concurrency` calls at a time — the first round in the file's order (so the first
//!   calls of a key from every worker meet), the others shuffled per worker; prints
//!   `tally <outcome> <n>`.
//!
//! The worker prints `ready <its wall clock, Unix ms>` once connected. Outcomes are [`Got`]'s kinds (see [`kind`]).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::{Point, Strategy};
use crate::outcome::Got;

/// An outcome's kind as the worker prints it: `Executed`, `Replayed`, `Ok`, `InProgress`,
/// `Duplicate`, `Conflict`, `NotFound`, or `Other:<description on one line>`.
pub fn kind(g: &Got) -> String {
    match g {
        Got::Executed(_) => "Executed".into(),
        Got::Replayed(_) => "Replayed".into(),
        Got::Ok => "Ok".into(),
        Got::InProgress => "InProgress".into(),
        Got::Duplicate => "Duplicate".into(),
        Got::Conflict => "Conflict".into(),
        Got::NotFound => "NotFound".into(),
        Got::Other(s) => format!("Other:{}", s.replace(['\n', '\r'], " ")),
    }
}

/// What a worker is asked to do.
#[derive(Debug, Clone)]
pub enum WorkerCmd {
    /// One call for the key, held at the point (none: not held).
    Once(String, Option<Point>),
    /// Calls until the answer is not busy or the time passed.
    UntilFree(String, Duration),
    /// A storm over the keys in the file: rounds, concurrency.
    Storm(std::path::PathBuf, u32, u32),
}

impl WorkerCmd {
    /// The worker's arguments after `<strategy> <url>`.
    pub fn args(&self) -> Vec<String> {
        match self {
            WorkerCmd::Once(k, p) => {
                vec!["once".into(), k.clone(), p.map_or("none", Point::id).into()]
            }
            WorkerCmd::UntilFree(k, d) => {
                vec!["until-free".into(), k.clone(), d.as_millis().to_string()]
            }
            WorkerCmd::Storm(f, rounds, conc) => vec![
                "storm".into(),
                f.display().to_string(),
                rounds.to_string(),
                conc.to_string(),
            ],
        }
    }
}

/// A running `fault_worker`.
pub struct Worker {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every line it printed so far.
    pub seen: Vec<String>,
    /// Its wall clock (Unix ms) when it was ready, as it printed it.
    pub wall_ms: i64,
    what: String,
}

impl Worker {
    /// Starts `exe` (the worker binary) for strategy `s` on `url` with `cmd`, optionally under
    /// `faketime -m -f <offset>` (monotonic clock left alone), and waits for its `ready`.
    pub async fn start(
        exe: &Path,
        s: Strategy,
        url: &str,
        cmd: &WorkerCmd,
        faketime: Option<&str>,
    ) -> Worker {
        let mut c = match faketime {
            Some(offset) => {
                let mut c = Command::new("faketime");
                c.env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                    .args(["-m", "-f", offset])
                    .arg(exe);
                c
            }
            None => Command::new(exe),
        };
        c.arg(s.id())
            .arg(url)
            .args(cmd.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let what = format!("fault_worker {} {url} {:?}", s.id(), cmd.args());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut w = Worker {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
            wall_ms: 0,
            what,
        };
        let ready = w.line().await;
        w.wall_ms = ready
            .strip_prefix("ready ")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("{} printed {ready:?}, not `ready <ms>`", w.what));
        w
    }

    /// The next line, within 60 s; panics when the worker ends or is silent that long.
    pub async fn line(&mut self) -> String {
        let next = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line()).await;
        match next {
            Ok(Ok(Some(l))) => {
                self.seen.push(l.clone());
                l
            }
            Ok(Ok(None)) => panic!("{} ended early; printed {:?}", self.what, self.seen),
            Ok(Err(e)) => panic!("reading {}: {e}", self.what),
            Err(_) => panic!("{} silent for 60 s; printed {:?}", self.what, self.seen),
        }
    }

    /// Reads lines until one equals `want`; panics on a `result` line before it (the call
    /// ended without reaching the pause point).
    pub async fn expect(&mut self, want: &str) {
        loop {
            let l = self.line().await;
            if l == want {
                return;
            }
            assert!(
                !l.starts_with("result ") || want.starts_with("result"),
                "{} answered {l:?} before {want:?}",
                self.what
            );
        }
    }

    /// Lets a paused worker go on.
    pub async fn release(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"go\n").await.expect("write to the worker");
        stdin.flush().await.expect("flush the worker's stdin");
    }

    /// SIGKILLs the worker and waits for it to be gone.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL the worker");
    }

    /// Reads every remaining line and waits for the worker to exit successfully; returns all
    /// the lines it printed.
    pub async fn finish(mut self) -> Vec<String> {
        drop(self.child.stdin.take());
        while let Ok(Ok(Some(l))) =
            tokio::time::timeout(Duration::from_secs(120), self.lines.next_line()).await
        {
            self.seen.push(l);
        }
        let status = self.child.wait().await.expect("wait for the worker");
        assert!(
            status.success(),
            "{} failed ({status}); printed {:?}",
            self.what,
            self.seen
        );
        self.seen
    }
}

/// The report of an `until-free` run.
#[derive(Debug, Clone, Default)]
pub struct UntilFree {
    /// Each call's outcome kind, in order.
    pub calls: Vec<String>,
    /// How long each call took, ms.
    pub call_ms: Vec<u64>,
    /// Worker-measured ms from its first call to its last.
    pub elapsed_ms: u64,
    /// Test-measured time from the start of the worker to its exit.
    pub wall: Duration,
    /// The worker's wall clock minus the test's when it was ready, ms (about ±60,000 under
    /// `faketime ±60s`).
    pub clock_offset_ms: i64,
}

/// This process's wall clock, Unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs `until-free` for `key` (at most `within`) to its end.
pub async fn until_free(
    exe: &Path,
    s: Strategy,
    url: &str,
    key: &str,
    within: Duration,
    faketime: Option<&str>,
) -> UntilFree {
    let started = Instant::now();
    let w = Worker::start(
        exe,
        s,
        url,
        &WorkerCmd::UntilFree(key.to_owned(), within),
        faketime,
    )
    .await;
    let clock_offset_ms = w.wall_ms - now_ms();
    let lines = w.finish().await;
    let mut r = UntilFree {
        wall: started.elapsed(),
        clock_offset_ms,
        ..UntilFree::default()
    };
    for l in lines {
        if let Some(c) = l.strip_prefix("call ") {
            let (ms, k) = c.split_once(' ').unwrap_or(("0", c));
            r.call_ms.push(ms.parse().unwrap_or(u64::MAX));
            r.calls.push(k.to_owned());
        } else if let Some(ms) = l.strip_prefix("elapsed ") {
            r.elapsed_ms = ms.parse().unwrap_or(u64::MAX);
        }
    }
    r
}

/// The tally of a `storm` worker: outcome kind → count.
pub fn storm_tally(lines: &[String]) -> std::collections::BTreeMap<String, u64> {
    let mut t = std::collections::BTreeMap::new();
    for l in lines {
        if let Some(rest) = l.strip_prefix("tally ")
            && let Some((k, n)) = rest.rsplit_once(' ')
        {
            *t.entry(k.to_owned()).or_default() += n.parse::<u64>().unwrap_or(0);
        }
    }
    t
}
