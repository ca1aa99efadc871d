//! A PostgreSQL database per test (features `test-util` and `postgres`).
//!
//! [`database_url`] returns the URL of a new, empty database (`CREATE DATABASE` on a shared
//! server), so tests run in parallel without seeing each other's rows. The server is, in
//! order:
//!
//! 1. the one `CHAIN_TEST_DATABASE_URL` names (a role that may `CREATE DATABASE`);
//! 2. else a throwaway cluster this module starts itself from the PostgreSQL server binaries
//!    (`initdb`, `pg_ctl` on `PATH` or in `/usr/lib/postgresql/*/bin`): one cluster per target
//!    directory, in `<target>/chain-test-pg` (data, log, port), listening on 127.0.0.1 on a
//!    free port with trust authentication. The first test binary to need it initializes and
//!    starts it under a file lock; every later test (and test binary) reuses it. When the
//!    tests run as root, the server runs as the `postgres` user (initdb refuses root).
//!    It keeps running after the tests: `.ci/test` stops it at the end; after a plain
//!    `cargo test`, stop it with [`stop_cluster`]'s command:
//!    `pg_ctl -D target/chain-test-pg/data stop` (as `postgres` when root).
//!
//! With neither, [`database_url`] panics with a message saying how to provide one: a
//! PostgreSQL test fails, it never passes without a database.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio_postgres::NoTls;

/// The environment variable naming an existing server to create test databases on.
pub const URL_VAR: &str = "CHAIN_TEST_DATABASE_URL";

/// The uid of the unprivileged user the cluster runs as when the tests run as root.
const POSTGRES_USER: &str = "postgres";

fn how_to() -> String {
    format!(
        "PostgreSQL tests need a server: set {URL_VAR}=postgres://USER@HOST:PORT/DB (a role \
         allowed to CREATE DATABASE), or install the PostgreSQL server binaries (initdb, \
         pg_ctl; Debian: `apt-get install postgresql`) so the tests can start a private \
         cluster in <target>/chain-test-pg"
    )
}

/// The target directory the running test binary lives in (`<target>/<profile>/deps/<bin>`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir)
}

/// The throwaway cluster's directory.
pub fn cluster_dir() -> PathBuf {
    target_dir().join("chain-test-pg")
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .collect::<Vec<_>>()
    });
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name));
    on_path.chain(debian).find(|p| p.is_file())
}

fn is_root() -> bool {
    // The effective uid, without libc: /proc/self/status's `Uid:` line (real, effective, …).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` user when we are root.
fn server_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg(POSTGRES_USER).arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("{what}: cannot run {command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

fn give_to_postgres(path: &Path) -> Result<(), String> {
    if !is_root() {
        return Ok(());
    }
    run(
        {
            let mut c = Command::new("chown");
            c.arg("-R").arg(format!("{POSTGRES_USER}:")).arg(path);
            c
        },
        "chown of the test cluster directory",
    )
}

/// Starts (or finds running) the throwaway cluster; returns its base URL.
fn ensure_cluster() -> Result<String, String> {
    let (Some(initdb), Some(pg_ctl)) = (find_binary("initdb"), find_binary("pg_ctl")) else {
        return Err(how_to());
    };
    let dir = cluster_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock_path = dir.with_extension("lock");
    let lock = File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    let data = dir.join("data");
    let port_file = dir.join("port");
    let running = data.join("postmaster.pid").exists() && {
        let mut status = server_command(&pg_ctl);
        status.arg("status").arg("-D").arg(&data);
        status.output().is_ok_and(|o| o.status.success())
    };
    if !running {
        give_to_postgres(&dir)?;
        if !data.join("PG_VERSION").exists() {
            let mut init = server_command(&initdb);
            init.arg("-D").arg(&data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]);
            run(init, "initdb of the test cluster")?;
        }
        let port = free_port()?;
        std::fs::write(&port_file, port.to_string())
            .map_err(|e| format!("cannot write {}: {e}", port_file.display()))?;
        let log = dir.join("log");
        let mut start = server_command(&pg_ctl);
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .arg("-w")
            .arg("-t")
            .arg("60")
            .arg("-o")
            .arg(format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
                 -c max_connections=600"
            ))
            .arg("start");
        give_to_postgres(&dir)?;
        run(start, "starting the test cluster")
            .map_err(|e| format!("{e}; see {}", log.display()))?;
    }
    let port = std::fs::read_to_string(&port_file)
        .map_err(|e| format!("cannot read {}: {e}", port_file.display()))?;
    drop(lock);
    Ok(format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        port.trim()
    ))
}

/// The server's base URL: [`URL_VAR`] or the throwaway cluster; and whether it is the
/// throwaway cluster.
fn server() -> Result<(String, bool), String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Ok((url, false)),
        _ => ensure_cluster().map(|url| (url, true)),
    }
}

/// The server's base URL: [`URL_VAR`] or the throwaway cluster.
pub fn server_url() -> Result<String, String> {
    server().map(|(url, _)| url)
}

/// Drops the test databases of test processes that are gone (their names carry the process
/// id), so a cluster that outlives many test runs does not fill the disk. Only on the
/// throwaway cluster, whose processes are all on this machine.
async fn drop_stale_databases(client: &tokio_postgres::Client) {
    let Ok(rows) = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'chain\\_test\\_%'",
            &[],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

/// `url` with its database name replaced by `name`.
fn with_dbname(url: &str, name: &str) -> String {
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// A new empty database on the test server; returns its URL. Panics with how to provide a
/// server when there is none.
pub async fn database_url() -> String {
    match try_database_url().await {
        Ok(url) => url,
        Err(e) => panic!("{e}"),
    }
}

/// Like [`database_url`], returning the failure instead of panicking.
pub async fn try_database_url() -> Result<String, String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (base, throwaway) = tokio::task::spawn_blocking(server)
        .await
        .map_err(|e| format!("starting the test cluster panicked: {e}"))??;
    let (client, connection) = tokio_postgres::connect(&base, NoTls)
        .await
        .map_err(|e| format!("cannot connect to the test server: {e}; {}", how_to()))?;
    let task = tokio::spawn(connection);
    if throwaway && NEXT.load(Ordering::Relaxed) == 0 {
        drop_stale_databases(&client).await;
    }
    let name = format!(
        "chain_test_{}_{}_{:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(|e| format!("cannot create the test database {name}: {e}"))?;
    drop(client);
    let _ = task.await;
    Ok(with_dbname(&base, &name))
}

/// The command that stops the throwaway cluster (what `.ci/test` runs at the end).
pub fn stop_cluster() -> String {
    let data = cluster_dir().join("data");
    let pg_ctl = find_binary("pg_ctl").unwrap_or_else(|| PathBuf::from("pg_ctl"));
    let prefix = if is_root() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    format!(
        "{prefix}{} -D {} stop -m fast",
        pg_ctl.display(),
        data.display()
    )
}

#[cfg(test)]
mod tests {
    use super::with_dbname;

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            with_dbname("postgres://u:p@h:5/postgres", "t1"),
            "postgres://u:p@h:5/t1"
        );
        assert_eq!(with_dbname("postgres://u@h", "t1"), "postgres://u@h/t1");
        assert_eq!(
            with_dbname("postgres://u@h/db?sslmode=disable", "t1"),
            "postgres://u@h/t1?sslmode=disable"
        );
    }
}
