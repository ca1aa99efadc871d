//! Worker processes on one database: the child ([`worker_main`], run by the `worker` binary)
//! and the parent's side ([`WorkerProc`], [`submit_runs`], [`verify_runs`]) of the
//! multi-process tests and the benchmark.
//!
//! A worker child is configured like the crash child (see [`crate::crash`]): the
//! [`ChildSpec`] in its environment names the database, the emulators
//! and, optionally, a journal kill point where every run it drives stops forever. It reports on
//! stdout, one line per event: `ready`, `claimed <run> <token> <recovered>`, `intent <step>` /
//! `result <step>` (journal writes), `pause <step>`, `finished <run> <state>`, `lost <run>`,
//! `failed <run> <error>`, and `report <json>` when it stops. It stops when its stdin closes.
//!
//! Modes (first argument): `work` drives runnable runs of `escalate_deal`; `refresh <n>
//! <connector>` waits for a `go` line on stdin, then makes `n` concurrent callers ask the vault
//! for a fresh token of alice's account and prints `refreshed <ok> <failed>`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chain_runtime::Principal as _;
use chain_runtime::Runtime;
use chain_runtime::engine::{WorkerEvent, WorkerOptions, idempotency_key};
use chain_runtime::journal::{EntryResult, RunState};
use chain_runtime::vault::{ClientSecret, VaultKey};
use tokio::sync::mpsc;

use crate::crash::{
    ChildSpec, CrashHarness, CrashStep, ENV_SPEC, ENV_VAULT_KEY, Pause, PausingStore,
    provider_config, secret_var,
};
use crate::demo::{Demo, DemoError};
use crate::escalate::escalate_deal;

/// Environment variable: the lease TTL of the worker's journal handle, in milliseconds.
pub const ENV_LEASE_MS: &str = "CHAIN_WORKER_LEASE_MS";
/// Environment variable: how many runs one worker drives at once.
pub const ENV_CONCURRENCY: &str = "CHAIN_WORKER_CONCURRENCY";

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn env_u64(name: &str) -> Result<Option<u64>, DemoError> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v.parse().map_err(|e| format!("{name}={v}: {e}"))?)),
        Err(_) => Ok(None),
    }
}

/// Resolves when stdin reaches its end (the parent closed it or died).
fn stdin_closed() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut sink = String::new();
        let stdin = std::io::stdin();
        while stdin
            .lock()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            sink.clear();
        }
        let _ = tx.send(());
    });
    rx
}

/// The worker child: see the module docs. `args` are the command-line arguments after the
/// program name.
pub async fn worker_main(args: &[String]) -> Result<(), DemoError> {
    let spec_text = std::env::var(ENV_SPEC)
        .map_err(|_| format!("{ENV_SPEC} is not set: the worker is started by its parent"))?;
    let spec: ChildSpec = serde_json::from_str(&spec_text)?;
    let key = VaultKey::from_env(ENV_VAULT_KEY)?;
    let mut builder = Runtime::at(&spec.db.to_string_lossy()).vault_key(key);
    for provider in &spec.providers {
        let var = secret_var(&provider.connector);
        let secret = std::env::var(&var).map_err(|_| format!("{var} is not set"))?;
        builder = builder.provider(provider_config(provider, ClientSecret::new(secret))?);
    }
    let pause = spec.pause.clone();
    if let Some(ms) = env_u64(ENV_LEASE_MS)? {
        builder = builder.lease_ttl(Duration::from_millis(ms));
    }
    let runtime = builder
        .chain::<escalate_deal>()
        .run_store_layer(move |runs| Arc::new(PausingStore::new(runs, pause)))
        .open()
        .await?;
    match args.first().map(String::as_str) {
        Some("work") => work(&runtime).await,
        Some("refresh") => {
            let callers: usize = args
                .get(1)
                .ok_or("refresh <callers> <connector>")?
                .parse()?;
            let connector = args.get(2).ok_or("refresh <callers> <connector>")?;
            refresh(&runtime, &spec, callers, connector).await
        }
        _ => Err("usage: worker work | worker refresh <callers> <connector>".into()),
    }
}

async fn work(runtime: &Runtime) -> Result<(), DemoError> {
    let lease_ms = env_u64(ENV_LEASE_MS)?.unwrap_or(30_000);
    let options = WorkerOptions {
        concurrency: usize::try_from(env_u64(ENV_CONCURRENCY)?.unwrap_or(8))?,
        poll_every: Duration::from_millis(100),
        renew_every: Duration::from_millis((lease_ms / 4).max(10)),
        on_event: Some(Arc::new(|event: &WorkerEvent| {
            say(&match event {
                WorkerEvent::Claimed {
                    run_id,
                    token,
                    recovered,
                } => format!("claimed {run_id} {token} {recovered}"),
                WorkerEvent::Finished { run_id, state } => format!("finished {run_id} {state}"),
                WorkerEvent::Lost { run_id } => format!("lost {run_id}"),
                WorkerEvent::Failed { run_id, error } => format!("failed {run_id} {error}"),
                other => format!("event {other:?}"),
            })
        })),
    };
    let shutdown = stdin_closed();
    say("ready");
    let report = runtime
        .engine
        .work(options, async move {
            let _ = shutdown.await;
        })
        .await;
    say(&format!(
        "report {{\"claimed\":{},\"finished\":{},\"lost\":{},\"failed\":{}}}",
        report.claimed, report.finished, report.lost, report.failed
    ));
    Ok(())
}

async fn refresh(
    runtime: &Runtime,
    spec: &ChildSpec,
    callers: usize,
    connector: &str,
) -> Result<(), DemoError> {
    let vault = runtime.vault()?.clone();
    let principal = spec.user.identifier();
    say("ready");
    let mut line = String::new();
    tokio::task::spawn_blocking(move || std::io::stdin().lock().read_line(&mut line)).await??;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (vault, principal, connector) =
            (vault.clone(), principal.clone(), connector.to_owned());
        tasks.spawn(async move { vault.ensure_fresh(&principal, &connector).await });
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                failed += 1;
                eprintln!("refresh failed: {e}");
            }
            Err(e) => {
                failed += 1;
                eprintln!("refresh task failed: {e}");
            }
        }
    }
    say(&format!("refreshed {ok} {failed}"));
    Ok(())
}

/// A worker child process and the lines it printed.
pub struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl WorkerProc {
    /// Starts `program` with `args` on `harness`'s database and emulators, stopping at
    /// `pause` if given, with `env` added.
    pub fn spawn(
        program: &str,
        harness: &CrashHarness,
        args: &[&str],
        pause: Option<Pause>,
        env: &[(&str, String)],
    ) -> Result<Self, DemoError> {
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(harness.child_env(pause)?)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let (tx, lines) = mpsc::unbounded_channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            lines,
            seen: Vec::new(),
            stderr,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line starting with `prefix`; returns the rest of it.
    pub async fn line(&mut self, prefix: &str, deadline: Instant) -> Result<String, DemoError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Ok(None) => {
                    return Err(self
                        .failure(&format!("the worker exited before printing `{prefix}`"))
                        .into());
                }
                Err(_) => {
                    return Err(self.failure(&format!("no `{prefix}` line in time")).into());
                }
            }
        }
    }

    /// Reads the lines printed so far without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// The lines seen that start with `prefix`, without it.
    pub fn seen_with(&self, prefix: &str) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_owned()))
            .collect()
    }

    /// Writes one line to the worker's stdin.
    pub fn send(&mut self, line: &str) -> Result<(), DemoError> {
        let stdin = self.stdin.as_mut().ok_or("stdin already closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes stdin: a `work` worker finishes the runs it drives and exits.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends a signal by name (`STOP`, `CONT`, `KILL`) with `kill(1)`.
    pub fn signal(&self, name: &str) -> Result<(), DemoError> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            return Err(format!("kill -{name} {} failed: {status}", self.pid()).into());
        }
        Ok(())
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> Result<(), DemoError> {
        self.child.kill()?;
        self.child.wait()?;
        self.drain();
        Ok(())
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit by itself (killing it at the deadline); reads its
    /// remaining lines.
    pub async fn wait_exit(&mut self, deadline: Instant) -> Result<ExitStatus, DemoError> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                // The reader thread may still hold the last lines.
                let grace = Instant::now() + Duration::from_secs(5);
                while let Ok(Some(line)) = tokio::time::timeout(
                    grace.saturating_duration_since(Instant::now()),
                    self.lines.recv(),
                )
                .await
                {
                    self.seen.push(line);
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                return Err(self.failure("the worker did not exit in time").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// An error message with what the worker printed.
    pub fn failure(&self, what: &str) -> String {
        let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let tail: Vec<&String> = self.seen.iter().rev().take(40).collect();
        format!("{what}; last stdout lines (newest first): {tail:?}; stderr: {stderr}")
    }
}

impl Drop for WorkerProc {
    /// A worker the parent gives up on is killed, never left behind (a stopped one too).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.signal("CONT");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Submits `n` runs of `escalate_deal` for the demo's user (concurrently); returns their ids.
pub async fn submit_runs(demo: &Demo, n: usize) -> Result<Vec<String>, DemoError> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (engine, user, deal) = (demo.engine.clone(), demo.user.clone(), demo.deal());
        tasks.spawn(async move { engine.submit::<escalate_deal>(user, (deal,)).await });
    }
    let mut ids = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        ids.push(joined??);
    }
    Ok(ids)
}

/// Waits until every run of `ids` reached a terminal state, or fails at `deadline`.
pub async fn wait_terminal(
    demo: &Demo,
    ids: &[String],
    deadline: Instant,
) -> Result<(), DemoError> {
    loop {
        let runs = demo.runs.list_runs().await?;
        let done = runs
            .iter()
            .filter(|r| ids.contains(&r.run_id) && r.state.is_terminal())
            .count();
        if done == ids.len() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("only {done} of {} runs ended in time", ids.len()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks that every run of `ids` completed with its four steps journaled, that each of its
/// three writes was committed exactly once at its provider (replays of the same idempotency
/// key allowed) as alice, that the providers saw no other writes, that the journal and the
/// audit trail agree for each run, that no operator alert was raised, and that the audit
/// chain verifies.
pub async fn verify_runs(harness: &CrashHarness, ids: &[String]) -> Result<(), DemoError> {
    let demo = &harness.demo;
    let sb = &demo.sandbox;
    let ledgers = [
        ("salesforce", sb.salesforce.ledger(), &demo.subjects[0]),
        ("jira", sb.jira.ledger(), &demo.subjects[1]),
        ("slack", sb.slack.ledger(), &demo.subjects[2]),
    ];
    for run_id in ids {
        let run = demo
            .runs
            .get_run(run_id)
            .await?
            .ok_or_else(|| format!("run {run_id} is not in the journal"))?;
        if !matches!(run.state, RunState::Completed { .. }) {
            return Err(format!("run {run_id} is {:?}, not completed", run.state).into());
        }
        let journal = demo.runs.journal(run_id).await?;
        let names: Vec<&str> = journal.iter().map(|e| e.name.as_str()).collect();
        let expected: Vec<&str> = CrashStep::ALL.iter().map(|s| s.name()).collect();
        if names != expected {
            return Err(format!("{run_id}: journal steps {names:?}, expected {expected:?}").into());
        }
        for (entry, step) in journal.iter().zip(CrashStep::ALL) {
            if !matches!(entry.result, Some(EntryResult::Ok { .. })) {
                return Err(
                    format!("{run_id}: `{}` has no successful result", entry.step_id).into(),
                );
            }
            if !step.writes() {
                continue;
            }
            let (_, ledger, subject) = ledgers
                .iter()
                .find(|(c, ..)| *c == step.connector())
                .ok_or("unknown connector")?;
            let write = ledger.exactly_once(&idempotency_key(run_id, &entry.step_id))?;
            if &write.subject != *subject {
                return Err(
                    format!("{run_id}: `{}` written as {}", entry.step_id, write.subject).into(),
                );
            }
        }
        harness
            .journal_agrees_with_audit(run_id)
            .await
            .map_err(|e| format!("{run_id}: {e}"))?;
    }
    for (connector, ledger, _) in &ledgers {
        let committed = ledger.committed_writes().count();
        if committed != ids.len() {
            return Err(format!(
                "{connector} committed {committed} writes for {} runs (each run writes once)",
                ids.len()
            )
            .into());
        }
    }
    if sb.jira.issue_keys().len() != ids.len() || sb.slack.message_count() != ids.len() {
        return Err(format!(
            "{} Jira issues and {} Slack messages for {} runs",
            sb.jira.issue_keys().len(),
            sb.slack.message_count(),
            ids.len()
        )
        .into());
    }
    let alerts = demo.engine.alerts(None).await?;
    if !alerts.is_empty() {
        return Err(format!("operator alerts were raised: {alerts:?}").into());
    }
    demo.audit.verify(None).await?;
    Ok(())
}
