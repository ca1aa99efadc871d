//! The decision graph `#[chain]` extracts from a chain body: step call sites as nodes,
//! control flow between them as edges. A run's position is a node of it.

use std::fmt::Write as _;

use serde::Serialize;

use crate::step::StepMeta;

/// Node id of the entry of every graph.
pub const START: u32 = 0;
/// Node id of the successful exit.
pub const END: u32 = 1;
/// Node id of the failed exit (a step error propagated with `?`, or an early `return Err`).
pub const FAIL: u32 = 2;

/// A chain's control flow between step call sites.
#[derive(Debug, Serialize)]
pub struct DecisionGraph {
    /// Start, end, fail, then one node per step call site in source order.
    pub nodes: &'static [Node],
    /// Possible transitions.
    pub edges: &'static [Edge],
}

/// A node of the decision graph.
#[derive(Debug, Serialize)]
pub struct Node {
    /// The node id; call sites are numbered from 3 in source order.
    pub id: u32,
    /// What the node is.
    pub kind: NodeKind,
}

/// What a decision-graph node stands for.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeKind {
    /// The chain's entry.
    Start,
    /// The successful exit.
    End,
    /// The failed exit.
    Fail,
    /// A step call site.
    Step {
        /// The step called there.
        #[serde(serialize_with = "serialize_step")]
        step: &'static StepMeta,
        /// The source line of the call.
        line: u32,
    },
    /// A `toolset![...]`: a model chooses which of the tools (the step nodes it has edges
    /// to) to call next, in a loop, or answers with text.
    ModelChoice {
        /// The source line of the toolset.
        line: u32,
    },
}

fn serialize_step<S: serde::Serializer>(step: &&'static StepMeta, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Step", 5)?;
    st.serialize_field("name", step.name)?;
    st.serialize_field("connector", step.connector)?;
    st.serialize_field("scopes", step.scopes)?;
    st.serialize_field("effect", &step.effect)?;
    if let Some(reason) = step.approval {
        st.serialize_field("approval", reason)?;
    } else {
        st.skip_field("approval")?;
    }
    st.end()
}

/// A possible transition between two nodes.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Edge {
    /// Source node id.
    pub from: u32,
    /// Target node id.
    pub to: u32,
    /// Why control can move this way.
    pub kind: EdgeKind,
}

/// The kind of a transition.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", content = "label", rename_all = "snake_case")]
pub enum EdgeKind {
    /// Straight-line sequence.
    Next,
    /// Entering a branch (`if`, `else`, a `match` arm), labelled with its condition.
    Branch(&'static str),
    /// Back to the start of a loop body.
    Loop,
    /// Leaving through `return`.
    Return,
    /// A step error propagated with `?`.
    Error,
}

impl DecisionGraph {
    /// The node with this id.
    pub fn node(&self, id: u32) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Renders the graph as a Mermaid flowchart for review.
    ///
    /// Step nodes show the step, its connector and scopes, and its effect; error edges
    /// are dotted.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        for node in self.nodes {
            let _ = match &node.kind {
                NodeKind::Start => writeln!(out, "    n{}([start])", node.id),
                NodeKind::End => writeln!(out, "    n{}([end])", node.id),
                NodeKind::Fail => writeln!(out, "    n{}([failed])", node.id),
                NodeKind::Step { step, line } => writeln!(
                    out,
                    "    n{}[\"{} (line {})<br/>{}: {}<br/>{}\"]",
                    node.id,
                    step.name,
                    line,
                    step.connector,
                    step.scopes.join(", "),
                    step.label()
                ),
                NodeKind::ModelChoice { line } => {
                    writeln!(
                        out,
                        "    n{}{{{{\"model chooses (line {})\"}}}}",
                        node.id, line
                    )
                }
            };
        }
        for edge in self.edges {
            let _ = match &edge.kind {
                EdgeKind::Next => writeln!(out, "    n{} --> n{}", edge.from, edge.to),
                EdgeKind::Branch(label) => {
                    writeln!(
                        out,
                        "    n{} -->|\"{}\"| n{}",
                        edge.from,
                        escape(label),
                        edge.to
                    )
                }
                EdgeKind::Loop => writeln!(out, "    n{} -->|loop| n{}", edge.from, edge.to),
                EdgeKind::Return => writeln!(out, "    n{} -->|return| n{}", edge.from, edge.to),
                EdgeKind::Error => writeln!(out, "    n{} -.->|error| n{}", edge.from, edge.to),
            };
        }
        out
    }
}

fn escape(label: &str) -> String {
    label.replace('"', "#quot;")
}
