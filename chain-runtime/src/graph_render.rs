//! Pictures of a chain's decision graph: Graphviz DOT and a self-contained SVG drawn on the
//! server (no JavaScript, no external layout tool), optionally with a run's path and position
//! highlighted.
//!
//! The SVG layout is layered: each node sits on the row of its longest distance from the start
//! (loop edges ignored), nodes of one row are ordered by id, the end and failure exits share the
//! last row. The output is deterministic, so it can be snapshot-tested and cached.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::graph::{DecisionGraph, END, EdgeKind, FAIL, NodeKind, START};

/// What to highlight on a picture: the nodes a run went through and where it stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Highlight {
    /// Nodes the run has passed.
    pub visited: BTreeSet<u32>,
    /// The node the run is at now.
    pub current: Option<u32>,
}

impl Highlight {
    /// No highlight: the bare graph.
    pub fn none() -> Self {
        Self::default()
    }

    /// The highlight of a run at `current` that completed the steps named in `done_steps`:
    /// every call site of those steps counts as passed, as do the start and `current`.
    pub fn for_run<'a>(
        graph: &DecisionGraph,
        current: u32,
        done_steps: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let done: BTreeSet<&str> = done_steps.into_iter().collect();
        let mut visited: BTreeSet<u32> = graph
            .nodes
            .iter()
            .filter(|n| matches!(&n.kind, NodeKind::Step { step, .. } if done.contains(step.name)))
            .map(|n| n.id)
            .collect();
        visited.insert(START);
        visited.insert(current);
        Self {
            visited,
            current: Some(current),
        }
    }
}

/// The output format of [`render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A standalone SVG document.
    Svg,
    /// A Mermaid flowchart.
    Mermaid,
    /// A Graphviz DOT digraph.
    Dot,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "svg" => Ok(Format::Svg),
            "mermaid" => Ok(Format::Mermaid),
            "dot" => Ok(Format::Dot),
            other => Err(format!(
                "unknown graph format `{other}`: expected svg, mermaid or dot"
            )),
        }
    }
}

/// Renders `graph` in `format` with `highlight` (Mermaid ignores the highlight).
pub fn render(graph: &DecisionGraph, format: Format, highlight: &Highlight) -> String {
    match format {
        Format::Svg => svg(graph, highlight),
        Format::Mermaid => graph.mermaid(),
        Format::Dot => dot(graph, highlight),
    }
}

fn label_lines(kind: &NodeKind) -> Vec<String> {
    match kind {
        NodeKind::Start => vec!["start".into()],
        NodeKind::End => vec!["end".into()],
        NodeKind::Fail => vec!["failed".into()],
        NodeKind::Step { step, line } => vec![
            format!("{} (line {line})", step.name),
            format!("{}: {}", step.connector, step.scopes.join(", ")),
            step.label(),
        ],
        NodeKind::ModelChoice { line } => vec![format!("model chooses (line {line})")],
    }
}

fn edge_label(kind: &EdgeKind) -> Option<&str> {
    match kind {
        EdgeKind::Next => None,
        EdgeKind::Branch(label) => Some(label),
        EdgeKind::Loop => Some("loop"),
        EdgeKind::Return => Some("return"),
        EdgeKind::Error => Some("error"),
    }
}

/// The graph as a Graphviz DOT digraph; passed nodes are filled, the current one bold.
pub fn dot(graph: &DecisionGraph, highlight: &Highlight) -> String {
    let mut out = String::from(
        "digraph chain {\n    rankdir=TB;\n    node [fontname=\"sans-serif\", fontsize=11];\n    edge [fontname=\"sans-serif\", fontsize=10];\n",
    );
    for node in graph.nodes {
        let label = label_lines(&node.kind)
            .iter()
            .map(|l| dot_escape(l))
            .collect::<Vec<_>>()
            .join("\\n");
        let shape = match node.kind {
            NodeKind::Step { .. } => "box",
            NodeKind::ModelChoice { .. } => "diamond",
            _ => "ellipse",
        };
        let mut attrs = format!("label=\"{label}\", shape={shape}");
        if highlight.visited.contains(&node.id) {
            attrs.push_str(", style=filled, fillcolor=\"#dbeafe\"");
        }
        if highlight.current == Some(node.id) {
            attrs.push_str(", penwidth=3, color=\"#d97706\"");
        }
        let _ = writeln!(out, "    n{} [{attrs}];", node.id);
    }
    for edge in graph.edges {
        let mut attrs = Vec::new();
        if let Some(label) = edge_label(&edge.kind) {
            attrs.push(format!("label=\"{}\"", dot_escape(label)));
        }
        if edge.kind == EdgeKind::Error {
            attrs.push("style=dashed".into());
        }
        if on_path(highlight, edge.from, edge.to) {
            attrs.push("color=\"#2563eb\", penwidth=2".into());
        }
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" [{}]", attrs.join(", "))
        };
        let _ = writeln!(out, "    n{} -> n{}{attrs};", edge.from, edge.to);
    }
    out.push_str("}\n");
    out
}

fn on_path(highlight: &Highlight, from: u32, to: u32) -> bool {
    highlight.visited.contains(&from) && highlight.visited.contains(&to)
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Edges that close a cycle (found by a depth-first search from the start), by index.
fn back_edges(graph: &DecisionGraph) -> BTreeSet<usize> {
    let mut back = BTreeSet::new();
    let mut state: BTreeMap<u32, u8> = BTreeMap::new(); // 1 = on stack, 2 = done
    // Iterative DFS: (node, next edge index to look at).
    let mut stack: Vec<(u32, usize)> = vec![(START, 0)];
    state.insert(START, 1);
    while let Some((node, from_idx)) = stack.last().copied() {
        let next = graph
            .edges
            .iter()
            .enumerate()
            .skip(from_idx)
            .find(|(_, e)| e.from == node);
        match next {
            Some((i, e)) => {
                if let Some(top) = stack.last_mut() {
                    top.1 = i + 1;
                }
                match state.get(&e.to) {
                    Some(1) => {
                        back.insert(i);
                    }
                    Some(_) => {}
                    None => {
                        state.insert(e.to, 1);
                        stack.push((e.to, 0));
                    }
                }
            }
            None => {
                state.insert(node, 2);
                stack.pop();
            }
        }
    }
    back
}

/// Row of each node: the longest forward distance from the start; exits on the last row.
fn ranks(graph: &DecisionGraph) -> BTreeMap<u32, usize> {
    let back = back_edges(graph);
    let mut rank: BTreeMap<u32, usize> = graph.nodes.iter().map(|n| (n.id, 0)).collect();
    for _ in 0..graph.nodes.len() {
        let mut changed = false;
        for (i, e) in graph.edges.iter().enumerate() {
            if back.contains(&i) || e.from == e.to {
                continue;
            }
            let from = rank.get(&e.from).copied().unwrap_or(0);
            if let Some(to) = rank.get_mut(&e.to)
                && *to < from + 1
            {
                *to = from + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let last = rank
        .iter()
        .filter(|(id, _)| **id != END && **id != FAIL)
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(0)
        + 1;
    for exit in [END, FAIL] {
        if let Some(r) = rank.get_mut(&exit) {
            *r = last;
        }
    }
    rank
}

const CHAR_W: usize = 7;
const LINE_H: usize = 15;
const ROW_GAP: usize = 56;
const COL_GAP: usize = 36;
const MARGIN: usize = 24;

struct Placed {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
    lines: Vec<String>,
}

/// Where each downward edge leaves its source (bottom side) and enters its target (top side):
/// spread along the side in the order of the other end's position, so that edges sharing a
/// node do not draw over each other.
fn ports(
    graph: &DecisionGraph,
    placed: &BTreeMap<u32, Placed>,
) -> (BTreeMap<usize, usize>, BTreeMap<usize, usize>) {
    let center = |id: u32| placed.get(&id).map(|p| p.x + p.w / 2).unwrap_or(0);
    let downward = |from: u32, to: u32| match (placed.get(&from), placed.get(&to)) {
        (Some(a), Some(b)) => b.y > a.y,
        _ => false,
    };
    let spread = |node: u32, mut edges: Vec<(usize, usize)>| {
        edges.sort_by_key(|&(i, x)| (x, i));
        let n = edges.len();
        let p = placed.get(&node);
        edges
            .into_iter()
            .enumerate()
            .filter_map(move |(k, (i, _))| p.map(|p| (i, p.x + p.w * (k + 1) / (n + 1))))
            .collect::<Vec<_>>()
    };
    let mut out = BTreeMap::new();
    let mut inn = BTreeMap::new();
    for node in graph.nodes {
        let leaving: Vec<(usize, usize)> = graph
            .edges
            .iter()
            .enumerate()
            .filter(|(_, e)| e.from == node.id && downward(e.from, e.to))
            .map(|(i, e)| (i, center(e.to)))
            .collect();
        out.extend(spread(node.id, leaving));
        let entering: Vec<(usize, usize)> = graph
            .edges
            .iter()
            .enumerate()
            .filter(|(_, e)| e.to == node.id && downward(e.from, e.to))
            .map(|(i, e)| (i, center(e.from)))
            .collect();
        inn.extend(spread(node.id, entering));
    }
    (out, inn)
}

/// The graph as a standalone SVG document. Passed nodes and the edges between them are blue,
/// the current node has a thick amber outline, error edges are dashed.
pub fn svg(graph: &DecisionGraph, highlight: &Highlight) -> String {
    let rank = ranks(graph);
    let mut rows: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for node in graph.nodes {
        rows.entry(rank.get(&node.id).copied().unwrap_or(0))
            .or_default()
            .push(node.id);
    }
    let node_w = graph
        .nodes
        .iter()
        .flat_map(|n| label_lines(&n.kind))
        .map(|l| l.chars().count() * CHAR_W + 20)
        .max()
        .unwrap_or(80)
        .max(80);
    let widest = rows.values().map(Vec::len).max().unwrap_or(1);
    let width = MARGIN * 2 + widest * node_w + widest.saturating_sub(1) * COL_GAP;
    let mut placed: BTreeMap<u32, Placed> = BTreeMap::new();
    let mut y = MARGIN;
    for ids in rows.values() {
        let row_w = ids.len() * node_w + ids.len().saturating_sub(1) * COL_GAP;
        let mut x = (width - row_w) / 2;
        let mut row_h = 0;
        for id in ids {
            let kind = graph.node(*id).map(|n| &n.kind);
            let lines = kind.map(label_lines).unwrap_or_default();
            let h = lines.len() * LINE_H + 14;
            row_h = row_h.max(h);
            placed.insert(
                *id,
                Placed {
                    x,
                    y,
                    w: node_w,
                    h,
                    lines,
                },
            );
            x += node_w + COL_GAP;
        }
        y += row_h + ROW_GAP;
    }
    let height = y - ROW_GAP + MARGIN;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\">"
    );
    out.push_str("<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#6b7280\"/></marker>");
    out.push_str("<marker id=\"arrow-path\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#2563eb\"/></marker></defs>\n");
    let (ports_out, ports_in) = ports(graph, &placed);
    for (i, edge) in graph.edges.iter().enumerate() {
        let (Some(a), Some(b)) = (placed.get(&edge.from), placed.get(&edge.to)) else {
            continue;
        };
        let taken = on_path(highlight, edge.from, edge.to);
        let (stroke, marker, sw) = if taken {
            ("#2563eb", "arrow-path", 2)
        } else {
            ("#6b7280", "arrow", 1)
        };
        let dash = if edge.kind == EdgeKind::Error {
            " stroke-dasharray=\"5,4\""
        } else {
            ""
        };
        let (x1, y1) = (
            ports_out.get(&i).copied().unwrap_or(a.x + a.w / 2),
            a.y + a.h,
        );
        let (x2, y2) = (ports_in.get(&i).copied().unwrap_or(b.x + b.w / 2), b.y);
        let (d, lx, ly) = if y2 > y1 {
            let my = (y1 + y2) / 2;
            (
                format!("M{x1},{y1} C{x1},{my} {x2},{my} {x2},{y2}"),
                (x1 + x2) / 2,
                my,
            )
        } else if edge.from == edge.to {
            // A self-loop: a bulge on the right side.
            let (sx, sy, ty) = (a.x + a.w, a.y + a.h / 3, a.y + 2 * a.h / 3);
            let bend = sx + COL_GAP;
            (
                format!("M{sx},{sy} C{bend},{} {bend},{} {sx},{ty}", a.y, a.y + a.h),
                bend,
                a.y + a.h / 2,
            )
        } else {
            // Upward (a loop): leave from the right side and come back into the right side.
            let (sx, sy) = (a.x + a.w, a.y + a.h / 2);
            let (tx, ty) = (b.x + b.w, b.y + b.h / 2);
            let bend = sx.max(tx) + COL_GAP;
            (
                format!("M{sx},{sy} C{bend},{sy} {bend},{ty} {tx},{ty}"),
                bend,
                (sy + ty) / 2,
            )
        };
        let _ = write!(
            out,
            "<path class=\"edge{}\" d=\"{d}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"{sw}\"{dash} marker-end=\"url(#{marker})\"/>",
            if taken { " taken" } else { "" }
        );
        if let Some(label) = edge_label(&edge.kind) {
            let _ = write!(
                out,
                "<text x=\"{lx}\" y=\"{ly}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#374151\" paint-order=\"stroke\" stroke=\"#ffffff\" stroke-width=\"3\">{}</text>",
                xml_escape(label)
            );
        }
        out.push('\n');
    }
    for (id, p) in &placed {
        let visited = highlight.visited.contains(id);
        let current = highlight.current == Some(*id);
        let fill = if visited { "#dbeafe" } else { "#ffffff" };
        let (stroke, sw) = if current {
            ("#d97706", 3)
        } else if visited {
            ("#2563eb", 2)
        } else {
            ("#374151", 1)
        };
        let rx = if p.lines.len() == 1 { p.h / 2 } else { 6 };
        let class = match (visited, current) {
            (_, true) => "node current",
            (true, false) => "node visited",
            _ => "node",
        };
        let _ = write!(
            out,
            "<g class=\"{class}\" id=\"n{id}\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"{rx}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{sw}\"/>",
            p.x, p.y, p.w, p.h
        );
        for (i, line) in p.lines.iter().enumerate() {
            let weight = if i == 0 { " font-weight=\"bold\"" } else { "" };
            let _ = write!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\"{weight}>{}</text>",
                p.x + p.w / 2,
                p.y + 7 + LINE_H * (i + 1) - 3,
                xml_escape(line)
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}
