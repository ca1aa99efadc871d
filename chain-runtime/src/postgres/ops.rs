//! Journal writes as SQL statements with owned parameters, built by the committing task (off
//! the writer) so that the writer only sends them: see [`super::writer`].

use tokio_postgres::types::ToSql;

use crate::journal::rows::encode_opt;
use crate::journal::{JournalError, JournalWrite};

/// An owned statement parameter.
pub(crate) type Param = Box<dyn ToSql + Sync + Send>;

/// One journal write of a unit. Entries and run positions are the bulk of a batch: the
/// writer merges those of every unit of a batch into one statement (with the lease check, see
/// `super::batch`); the rest are sent one statement each, in order.
pub(crate) enum Op {
    /// A journal entry written (inserted, or replaced as a whole).
    Entry(EntryRow),
    /// The run's position moved to `node`.
    Node {
        /// The run.
        run_id: String,
        /// Its new position.
        node: i64,
    },
    /// Any other statement.
    Statement {
        /// The SQL (prepared once per connection).
        sql: &'static str,
        /// Its parameters.
        params: Vec<Param>,
        /// A precondition: the statement must change exactly one row, else the unit is not
        /// applied (see [`JournalWrite::State`]).
        must_change_one: bool,
    },
}

/// A `journal_entries` row.
pub(crate) struct EntryRow {
    pub(crate) run_id: String,
    pub(crate) seq: i64,
    pub(crate) step_id: String,
    pub(crate) kind: &'static str,
    pub(crate) name: String,
    pub(crate) attempt: i64,
    pub(crate) result: Option<String>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Entry(e) => f
                .debug_struct("Entry")
                .field("run_id", &e.run_id)
                .field("seq", &e.seq)
                .finish_non_exhaustive(),
            Op::Node { run_id, node } => f
                .debug_struct("Node")
                .field("run_id", run_id)
                .field("node", node)
                .finish(),
            Op::Statement { sql, .. } => f
                .debug_struct("Statement")
                .field("sql", sql)
                .finish_non_exhaustive(),
        }
    }
}

// `ord` is taken anew on every write, so a replaced compensation moves last, as a replaced
// row does in the SQLite journal.
pub(crate) const COMPENSATION: &str = "INSERT INTO journal_compensations (run_id, step_id, compensator, attempt, result, ord) \
     VALUES ($1, $2, $3, $4, $5, nextval('journal_compensations_ord')) \
     ON CONFLICT (run_id, step_id) DO UPDATE SET compensator = excluded.compensator, \
     attempt = excluded.attempt, result = excluded.result, ord = excluded.ord";

pub(crate) const STATE: &str = "UPDATE run_runs SET state = $2, state_kind = $3 \
     WHERE run_id = $1 AND ($4::text IS NULL OR state_kind = $4)";

pub(crate) const ALERT: &str = "INSERT INTO alert_alerts (run_id, alert) VALUES ($1, $2)";

fn op(sql: &'static str, params: Vec<Param>) -> Op {
    Op::Statement {
        sql,
        params,
        must_change_one: false,
    }
}

/// The statements of one journal write of the run `run_id` (the unit's lease's run).
pub(crate) fn ops_of(run_id: Option<&str>, write: JournalWrite) -> Result<Vec<Op>, JournalError> {
    let needs_run = || {
        run_id.map(str::to_owned).ok_or_else(|| {
            JournalError::Backend("a journal write concerning a run needs the run's lease".into())
        })
    };
    Ok(match write {
        JournalWrite::Entry { entry, node } => {
            let run_id = needs_run()?;
            let result = encode_opt(entry.result.as_ref())?;
            vec![
                Op::Entry(EntryRow {
                    run_id: run_id.clone(),
                    seq: i64::from(entry.seq),
                    step_id: entry.step_id,
                    kind: entry.kind.as_str(),
                    name: entry.name,
                    attempt: i64::from(entry.attempt),
                    result,
                }),
                Op::Node {
                    run_id,
                    node: i64::from(node),
                },
            ]
        }
        JournalWrite::Compensation(entry) => {
            let run_id = needs_run()?;
            let result = encode_opt(entry.result.as_ref())?;
            vec![op(
                COMPENSATION,
                vec![
                    Box::new(run_id),
                    Box::new(entry.step_id),
                    Box::new(entry.compensator),
                    Box::new(i64::from(entry.attempt)),
                    Box::new(result),
                ],
            )]
        }
        JournalWrite::State { expected, state } => {
            let run_id = needs_run()?;
            vec![Op::Statement {
                sql: STATE,
                params: vec![
                    Box::new(run_id),
                    Box::new(serde_json::to_string(&state)?),
                    Box::new(state.kind()),
                    Box::new(expected),
                ],
                must_change_one: true,
            }]
        }
        JournalWrite::Alert(alert) => {
            let json = serde_json::to_string(&alert)?;
            vec![op(ALERT, vec![Box::new(alert.run_id), Box::new(json)])]
        }
    })
}
