//! Journal writes as SQL statements with owned parameters, built by the committing task (off
//! the writer) so that the writer only sends them: see [`super::writer`].

use tokio_postgres::types::ToSql;

use crate::journal::rows::encode_opt;
use crate::journal::{JournalError, JournalWrite};

/// An owned statement parameter.
pub(crate) type Param = Box<dyn ToSql + Sync + Send>;

/// One statement of a unit.
pub(crate) struct Op {
    /// The SQL (prepared once per connection).
    pub(crate) sql: &'static str,
    /// Its parameters.
    pub(crate) params: Vec<Param>,
    /// A precondition: the statement must change exactly one row, else the unit is not
    /// applied (see [`JournalWrite::State`]).
    pub(crate) must_change_one: bool,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op")
            .field("sql", &self.sql)
            .finish_non_exhaustive()
    }
}

pub(crate) const ENTRY: &str = "INSERT INTO journal_entries (run_id, seq, step_id, kind, name, attempt, result) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id, seq) DO UPDATE SET \
     step_id = excluded.step_id, kind = excluded.kind, name = excluded.name, \
     attempt = excluded.attempt, result = excluded.result";

pub(crate) const NODE: &str = "UPDATE run_runs SET node = $2 WHERE run_id = $1 AND node <> $2";

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
    Op {
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
                op(
                    ENTRY,
                    vec![
                        Box::new(run_id.clone()),
                        Box::new(i64::from(entry.seq)),
                        Box::new(entry.step_id),
                        Box::new(entry.kind.as_str()),
                        Box::new(entry.name),
                        Box::new(i64::from(entry.attempt)),
                        Box::new(result),
                    ],
                ),
                op(NODE, vec![Box::new(run_id), Box::new(i64::from(node))]),
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
            vec![Op {
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
