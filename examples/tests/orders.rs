//! The `orders` demo as a new user meets it: its bad inputs are refused with a message that
//! says what is wrong (and never prints a password), a server it cannot reach is named with the
//! cause, and a default run on SQLite reports its progress on stderr, keeps stdout for the
//! summary, and ends with the OK line. Runs the built binary (`CARGO_BIN_EXE_orders`).

use std::process::{Command, Output};

fn orders(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(args)
        // The demo reads no environment of its own; keep the test servers' variables out of it.
        .env_remove("DATABASE_URL")
        .output()
        .expect("run the orders demo")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The run failed, printed nothing on stdout, and its stderr contains each of `needles`.
fn refused(out: &Output, needles: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "expected a failure, got {out:?}");
    assert_eq!(text(&out.stdout), "", "stdout must stay empty: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}:\n{stderr}");
    }
    stderr
}

#[test]
fn requests_below_one_key_or_above_the_bound_are_refused() {
    let out = orders(&["--requests", "6"]);
    refused(&out, &["--requests", "must be at least 7"]);
    let out = orders(&["--requests", "100001"]);
    refused(&out, &["--requests", "must be at most 100000"]);
    let out = orders(&["--concurrency", "0"]);
    refused(&out, &["--concurrency", "must be at least 1"]);
}

#[test]
fn an_in_memory_sqlite_url_is_refused_with_the_reason() {
    let out = orders(&["--database-url", "sqlite::memory:"]);
    refused(&out, &["in-memory SQLite", "leave --database-url out"]);
}

#[test]
fn an_unknown_scheme_is_refused() {
    let out = orders(&["--database-url", "ftp://example.invalid/x"]);
    refused(
        &out,
        &[
            "unsupported --database-url",
            "postgres://, mysql:// (or mariadb://) or sqlite://",
        ],
    );
    // A usage error, as clap's own: exit 2.
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Malformed URLs are usage errors, refused with exit 2 before anything connects or is
/// created, each in one line naming the problem: an empty `--redis-url`, an empty node (an
/// extra comma), a node of another scheme in a Cluster list, an in-memory SQLite database.
#[test]
fn malformed_urls_are_usage_errors_named_in_one_line() {
    for (args, needle) in [
        (vec!["--redis-url", ""], "--redis-url is empty"),
        (vec!["--redis-url", " , "], "--redis-url is empty"),
        (
            vec!["--redis-url", "redis://127.0.0.1:1,"],
            "has an empty node URL (node 2 of 2): remove the extra comma",
        ),
        (
            vec![
                "--redis-url",
                "redis://:pw@127.0.0.1:1,,redis://127.0.0.1:2",
            ],
            "has an empty node URL (node 2 of 3)",
        ),
        (
            vec![
                "--redis-url",
                "redis://127.0.0.1:1/0,,redis://:pw@127.0.0.1:2",
            ],
            "`redis://127.0.0.1:1/0,,redis://127.0.0.1:2` has an empty node URL",
        ),
        (
            vec!["--redis-url", "redis://127.0.0.1:1,http://127.0.0.1:2"],
            "unsupported --redis-url `http://127.0.0.1:2`",
        ),
        (
            vec!["--database-url", "sqlite::memory:"],
            "in-memory SQLite",
        ),
        (
            vec!["--database-url", "http://:pw@127.0.0.1:5432"],
            "unsupported --database-url `http://127.0.0.1:5432`",
        ),
        (vec!["--database-url", ""], "--database-url is empty"),
        (vec!["--database-url", "sqlite://"], "names no SQLite file"),
        (vec!["--database-url", "sqlite:"], "names no SQLite file"),
        (
            vec!["--database-url", "postgres://app:pw@127.0.0.1:99999/x"],
            "--database-url postgres://app@127.0.0.1:99999/x does not parse",
        ),
        (
            vec!["--database-url", "mysql://root:pw@127.0.0.1:99999/x"],
            "does not parse",
        ),
        (
            vec!["--database-url", "mariadb://root:pw@127.0.0.1:3306"],
            "`mariadb://root@127.0.0.1:3306` names no database",
        ),
        (
            vec![
                "--database-url",
                "postgres://app:pw@127.0.0.1/x?sslmode=bogus",
            ],
            "does not parse: error with configuration: unknown value \"bogus\" for `ssl_mode`",
        ),
        (
            vec!["--redis-url", "rediss://:pw@127.0.0.1:6380"],
            "rediss:// (TLS) is not built in",
        ),
        (
            vec!["--redis-url", "redis://:pw@127.0.0.1:99999"],
            "--redis-url redis://127.0.0.1:99999 does not parse",
        ),
        (
            vec![
                "--redis-url",
                "redis://127.0.0.1:1,redis://:pw@127.0.0.1:6379/abc",
            ],
            "--redis-url redis://127.0.0.1:6379/abc does not parse",
        ),
    ] {
        let out = orders(&args);
        let stderr = refused(&out, &[needle]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(!stderr.contains("pw@"), "{args:?}: {stderr}");
        assert_eq!(
            stderr.matches("error with configuration").count(),
            usize::from(stderr.contains("error with configuration")),
            "{args:?}: sqlx's wrapper said once: {stderr}"
        );
    }
}

/// A PostgreSQL URL without a host (`postgres:///db`: a local Unix socket, or localhost)
/// is tried, not a crash: sqlx 0.9.0's URL rebuilding panicked on the socket directory it
/// defaults to, inside the runtime's connect diagnosis.
#[test]
fn a_postgres_url_without_a_host_is_tried_not_a_crash() {
    let out = orders(&[
        "--database-url",
        "postgres:///no_such_db?user=idempotent_no_such_role",
    ]);
    let stderr = refused(&out, &["--database-url"]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

/// Several comma-separated `--redis-url` nodes on one standalone server: redis-rs's answer
/// ("cluster support disabled") comes with the reason — a list selects Redis Cluster mode.
#[test]
#[cfg_attr(
    not(has_redis),
    ignore = "no Redis: IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
)]
fn a_node_list_on_a_standalone_server_names_cluster_mode() {
    let url = match std::env::var(idempotent_tests::REDIS_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => idempotent_tests::throwaway_redis_url()
            .or_else(|| idempotent_tests::server_url(idempotent_tests::REDIS_ENV, "Redis")),
    };
    let Some(url) = url else {
        return;
    };
    let out = orders(&["--redis-url", &format!("{url},{url}")]);
    let stderr = refused(
        &out,
        &[
            "cluster support disabled",
            "several comma-separated --redis-url nodes select Redis Cluster mode; for one standalone server give one URL",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

/// A port nothing listens on (1, reserved): refused at once, with the URL minus its password.
#[test]
fn a_refused_database_is_named_with_its_cause_and_no_password() {
    for url in [
        "postgres://app:s3cret@127.0.0.1:1/orders",
        "mysql://app:s3cret@127.0.0.1:1/orders",
    ] {
        let out = orders(&["--database-url", url]);
        let stderr = refused(&out, &["connection refused", "app@127.0.0.1:1/orders"]);
        assert!(!stderr.contains("s3cret"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

/// A port where something accepts connections but never speaks the database's protocol (a
/// mistyped port, another kind of server): the demo gives up after its probe's time-out with
/// one line saying so, instead of waiting forever.
#[test]
fn a_server_that_never_answers_the_handshake_is_named() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    for (url, what) in [
        (
            format!("postgres://app@127.0.0.1:{port}/orders"),
            "no PostgreSQL handshake",
        ),
        (
            format!("mysql://app@127.0.0.1:{port}/orders"),
            "no MySQL/MariaDB handshake",
        ),
    ] {
        let out = orders(&["--database-url", &url]);
        let stderr = refused(&out, &[what, "another kind of server"]);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    drop(silent);
}

/// `.invalid` never resolves (RFC 2606).
#[test]
fn an_unknown_database_host_is_named() {
    let out = orders(&["--database-url", "postgres://app@db.invalid/orders"]);
    refused(&out, &["unknown host", "db.invalid"]);
}

/// A Redis URL nothing answers: one line, with the cause, also under `--json`.
#[test]
fn a_refused_redis_is_named_once() {
    for extra in [&[][..], &["--json"][..]] {
        let mut args = vec!["--redis-url", "redis://:pw@127.0.0.1:1"];
        args.extend_from_slice(extra);
        let out = orders(&args);
        let stderr = refused(
            &out,
            &[
                "--redis-url: cannot connect to redis://127.0.0.1:1",
                "connection refused",
            ],
        );
        assert!(!stderr.contains("pw"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

/// The default run on a SQLite file: progress on stderr (the tables, the storm's size with the
/// rounding, one line per operation), the table and the OK line on stdout; with `--cleanup`
/// on a file of its own, no table is left behind.
#[test]
fn a_small_run_on_a_sqlite_file_reports_progress_and_cleans_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("demo.db");
    let url = format!("sqlite://{}", file.display());
    let out = orders(&["--requests", "75", "--database-url", &url, "--cleanup"]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout
            .trim_end()
            .ends_with("OK: every operation applied exactly one effect per key, with no errors."),
        "{stdout}"
    );
    assert!(
        stderr.contains("demo_ledger") && stderr.contains("idempotency_records (created now)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("dropped at the end (--cleanup)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("70 requests per operation = 10 keys x 7")
            && stderr.contains("--requests 75 rounded down to whole keys"),
        "{stderr}"
    );
    let progress: Vec<&str> = stderr.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(progress.len(), 10, "one line per operation:\n{stderr}");
    assert!(progress[0].starts_with("[ 1/10] place_order"), "{stderr}");
    assert!(progress.iter().all(|l| l.contains(" 0 errors")), "{stderr}");

    let tables = Command::new("sqlite3")
        .arg(&file)
        .arg("SELECT name FROM sqlite_master WHERE type = 'table'")
        .output();
    // Without the sqlite3 shell, read the file through the demo's own check instead: a
    // second run must report the record table as created anew.
    match tables {
        Ok(t) if t.status.success() => assert_eq!(text(&t.stdout).trim(), "", "tables left"),
        _ => {
            let again = orders(&["--requests", "7", "--database-url", &url, "--cleanup"]);
            let stderr = text(&again.stderr);
            assert!(again.status.success(), "{stderr}");
            assert!(
                stderr.contains("idempotency_records (created now)"),
                "{stderr}"
            );
        }
    }
}

/// URL schemes are case-insensitive (RFC 3986, section 3.1): `SQLITE://` runs as `sqlite://`,
/// and an unknown scheme in capitals is still refused as a usage error.
#[test]
fn a_scheme_in_capitals_is_the_same_scheme() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("SQLITE://{}", dir.path().join("Upper.db").display());
    let out = orders(&["--requests", "7", "--database-url", &url]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("OK: every operation applied exactly one effect per key"),
        "{stdout}"
    );
    let out = orders(&["--database-url", "FTP://example.invalid/x"]);
    refused(
        &out,
        &["unsupported --database-url", "ftp://example.invalid/x"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Starts the demo with `args`, waits (by reading its stderr) for the storm's first progress
/// line, sends it `signal` (`-INT`, as Ctrl-C does, or `-TERM`, as `timeout`, `docker stop`
/// and systemd do) and returns its exit status and whole stderr. `--requests 100000` makes
/// the storm last far longer than the signal takes.
fn interrupt_the_storm(signal: &str, args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::{BufRead as _, Read as _};
    let mut child = Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["--requests", "100000"])
        .args(args)
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the orders demo");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("read stderr");
        assert!(n > 0, "the demo ended before its storm started:\n{seen}");
        seen.push_str(&line);
        if line.starts_with("storm: ") {
            break;
        }
    }
    let kill = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success(), "kill {signal} failed");
    stderr.read_to_string(&mut seen).expect("read stderr");
    let status = child.wait().expect("wait for the demo");
    (status, seen)
}

/// The temporary SQLite file of a default run (`<temp dir>/.tmpXXXX/orders-demo.db`), as its
/// table line on `stderr` names it.
fn temp_file_of(stderr: &str) -> std::path::PathBuf {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("tables on sqlite://"))
        .unwrap_or_else(|| panic!("no table line:\n{stderr}"));
    let path = &line["tables on sqlite://".len()..line.find(": ").expect("a colon")];
    std::path::PathBuf::from(path)
}

/// `signal` during the default run (a temporary SQLite file): the storm stops, the file and
/// its directory are deleted, the demo says so with `name` and exits `code`.
fn an_interrupted_default_run_deletes_the_temporary_file(signal: &str, name: &str, code: i32) {
    let (status, stderr) = interrupt_the_storm(signal, &[]);
    assert_eq!(status.code(), Some(code), "{stderr}");
    let file = temp_file_of(&stderr);
    assert!(
        stderr.lines().any(|l| l
            == format!(
                "interrupted ({name}): deleted the temporary SQLite file {}",
                file.display()
            )),
        "{stderr}"
    );
    assert!(!file.exists(), "{} still exists", file.display());
    let dir = file.parent().expect("its directory");
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(
        !stderr.contains("[10/10]"),
        "the storm ran to the end:\n{stderr}"
    );
}

/// Ctrl-C during the default run: exit 130.
#[test]
fn ctrl_c_on_the_default_run_deletes_the_temporary_file() {
    an_interrupted_default_run_deletes_the_temporary_file("-INT", "Ctrl-C", 130);
}

/// SIGTERM (a new user's `kill -TERM`: `timeout`, `docker stop` and systemd send it) is
/// handled as Ctrl-C is: exit 143.
#[test]
fn sigterm_on_the_default_run_deletes_the_temporary_file() {
    an_interrupted_default_run_deletes_the_temporary_file("-TERM", "SIGTERM", 143);
}

/// Ctrl-C with `--cleanup` on a SQLite file of the test's own: the demo's tables are dropped.
#[test]
fn ctrl_c_with_cleanup_drops_the_tables_on_a_sqlite_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("interrupted.db");
    let url = format!("sqlite://{}", file.display());
    let (status, stderr) = interrupt_the_storm("-INT", &["--database-url", &url, "--cleanup"]);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.lines().any(|l| l
            == format!("interrupted (Ctrl-C): dropped the demo's tables on {url} (--cleanup)")),
        "{stderr}"
    );
    let tables = tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(async {
            let pool = sqlx::SqlitePool::connect(&url)
                .await
                .expect("open the file");
            let names: Vec<String> =
                sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                    .fetch_all(&pool)
                    .await
                    .expect("list tables");
            pool.close().await;
            names
        });
    assert_eq!(tables, Vec::<String>::new(), "tables left");
}

/// Ctrl-C with `--cleanup` on PostgreSQL, in a schema of the test's own (`search_path`): the
/// demo's tables and the record table it created are dropped.
#[test]
#[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
fn ctrl_c_with_cleanup_drops_the_tables_on_postgres() {
    let Some(base) = idempotent_tests::server_url(idempotent_tests::POSTGRES_ENV, "PostgreSQL")
    else {
        return;
    };
    let schema = idempotent_tests::unique("orders_ctrl_c");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let pool = rt.block_on(async {
        let pool = sqlx::PgPool::connect(&base).await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&pool)
            .await
            .expect("create the schema");
        pool
    });
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    let (status, stderr) = interrupt_the_storm("-INT", &["--database-url", &url, "--cleanup"]);
    let left: Vec<String> = rt.block_on(async {
        let left = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
        )
        .bind(&schema)
        .fetch_all(&pool)
        .await
        .expect("list tables");
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&pool)
            .await
            .expect("drop the schema");
        left
    });
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.lines().any(|l| l
            .starts_with("interrupted (Ctrl-C): dropped the demo's tables on postgres://")
            && l.ends_with("(--cleanup)")),
        "{stderr}"
    );
    assert!(
        stderr.contains("idempotency_records (created now)"),
        "{stderr}"
    );
    assert_eq!(left, Vec::<String>::new(), "tables left in {schema}");
}

/// A loopback port where another kind of server listens, on a thread of its own: `answer`
/// `None` accepts and holds every connection without a byte; `Some(reply)` reads what the
/// client sent, answers `reply` and closes (an HTTP server refusing the request).
fn other_server(answer: Option<&'static [u8]>) -> u16 {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if let Some(reply) = answer {
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(reply);
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
            held.push(stream);
        }
    });
    port
}

/// Ctrl-C while the demo is still connecting (to a port that accepts and never answers) says
/// that nothing was created there, not that "the tables stay": there are none.
#[test]
fn ctrl_c_while_connecting_says_nothing_was_created() {
    use std::io::Read as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (accepted, connecting) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
            let _ = accepted.send(());
        }
    });
    let url = format!("postgres://app@127.0.0.1:{port}/orders");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["--database-url", &url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the demo");
    connecting
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the demo connects");
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = child.wait().expect("wait for the demo");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "interrupted (Ctrl-C): while connecting to {url}: nothing was created there"
        )),
        "{stderr}"
    );
}

const HTTP_400: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A bad `--redis-url` is said in the shape of a bad `--database-url`: an unsupported scheme
/// is refused naming the schemes; otherwise one line `--redis-url: cannot connect to <URL
/// without password>: <cause>`, the cause named (refused, unknown host, no handshake from
/// another kind of server, an answer in another protocol).
#[test]
fn a_bad_redis_url_is_named_like_a_bad_database_url() {
    let out = orders(&["--redis-url", "http://:pw@127.0.0.1:6379"]);
    let stderr = refused(
        &out,
        &[
            "unsupported --redis-url `http://127.0.0.1:6379`",
            "use redis://host:port (comma-separated node URLs select a Redis Cluster)",
        ],
    );
    assert!(!stderr.contains("pw"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    let out = orders(&["--database-url", "http://:pw@127.0.0.1:5432"]);
    refused(
        &out,
        &["unsupported --database-url `http://127.0.0.1:5432`"],
    );

    let silent = other_server(None);
    let http = other_server(Some(HTTP_400));
    for (url, shown, cause) in [
        (
            "redis://:pw@127.0.0.1:1".to_owned(),
            "redis://127.0.0.1:1".to_owned(),
            "connection refused".to_owned(),
        ),
        (
            "redis://:pw@cache.invalid:6379".to_owned(),
            "redis://cache.invalid:6379".to_owned(),
            "unknown host".to_owned(),
        ),
        (
            format!("redis://:pw@127.0.0.1:{silent}"),
            format!("redis://127.0.0.1:{silent}"),
            format!(
                "timed out: no answer from that address in time: a TCP connection to 127.0.0.1:{silent} opens, but no Redis handshake came within 2s (is a Redis server listening on that port, not another kind of server?)"
            ),
        ),
        (
            format!("redis://:pw@127.0.0.1:{http}"),
            format!("redis://127.0.0.1:{http}"),
            "the server there answered, but not in the store's protocol, or closed the connection at the handshake (is another kind of server listening on that port?)".to_owned(),
        ),
    ] {
        let out = orders(&["--redis-url", &url]);
        let stderr = refused(
            &out,
            &[&format!("error: --redis-url: cannot connect to {shown}: {cause}")],
        );
        assert!(!stderr.contains("pw@"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

/// The same other servers on a `--database-url` port: the same shape and causes.
#[test]
fn another_kind_of_server_on_the_database_port_is_named() {
    let http = other_server(Some(HTTP_400));
    let out = orders(&[
        "--database-url",
        &format!("postgres://app:pw@127.0.0.1:{http}/orders"),
    ]);
    let stderr = refused(
        &out,
        &[&format!(
            "error: --database-url: cannot connect to postgres://app@127.0.0.1:{http}/orders (the pool's first connection, within its acquire_timeout of 10s): the server there answered, but not in the store's protocol, or closed the connection at the handshake (is another kind of server listening on that port?)"
        )],
    );
    assert!(!stderr.contains("pw@"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}
