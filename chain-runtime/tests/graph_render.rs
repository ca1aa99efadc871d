//! The decision-graph pictures: DOT and SVG snapshots of a chain with a branch, a loop and
//! error exits, and the highlight of a run's path and position.
//!
//! Snapshots live in `tests/snapshots/`; set `UPDATE_SNAPSHOTS=1` to rewrite them after a
//! reviewed change.

use chain_runtime::graph_render::{self, Format, Highlight};
use chain_runtime::prelude::*;
use test_support::UserId;

#[step(connector = "crm", scopes = ["crm.read"], read)]
async fn load_deal(ctx: &StepCtx<UserId>, id: String) -> Result<u32, StepError> {
    let _ = (ctx, id);
    Ok(3)
}

#[step(connector = "crm", scopes = ["crm.write"], compensate = unmark)]
async fn mark_deal(ctx: &StepCtx<UserId>, id: String) -> Result<String, StepError> {
    let _ = ctx;
    Ok(id)
}

#[compensator(connector = "crm", scopes = ["crm.write"])]
async fn unmark(ctx: &StepCtx<UserId>, id: &String) -> Result<(), StepError> {
    let _ = (ctx, id);
    Ok(())
}

#[step(connector = "chat", scopes = ["chat:write"], irreversible = "a posted message is read at once")]
async fn post_note(ctx: &StepCtx<UserId>, text: String) -> Result<(), StepError> {
    let _ = (ctx, text);
    Ok(())
}

/// Marks a deal when it is big, then posts one note per tier.
#[chain(principal = UserId)]
async fn tiers(ctx: &ChainCtx<UserId>, id: String) -> Result<(), ChainError> {
    let size = load_deal(ctx, id.clone()).await?;
    if size > 2 {
        mark_deal(ctx, id.clone()).await?;
    }
    for tier in 0..size {
        post_note(ctx, format!("<tier {tier}> & \"more\"")).await?;
    }
    Ok(())
}

fn snapshot(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "snapshot {} missing ({e}); run with UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    assert_eq!(actual, expected, "snapshot {name} differs");
}

/// Every `<tag` has its closing tag (or is self-closing): a cheap well-formedness check.
fn balanced(svg: &str) -> bool {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').unwrap();
        let tag = &rest[..end];
        if let Some(name) = tag.strip_prefix('/') {
            if stack.pop().as_deref() != Some(name) {
                return false;
            }
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap().to_owned());
        }
        rest = &rest[end + 1..];
    }
    stack.is_empty()
}

#[test]
fn dot_snapshot() {
    let dot = graph_render::render(&tiers::META.graph, Format::Dot, &Highlight::none());
    assert!(dot.contains("style=dashed"), "error edges are dashed");
    assert!(dot.contains("label=\"loop\""));
    snapshot("tiers.dot", &dot);
}

#[test]
fn svg_snapshot_is_well_formed_and_escaped() {
    let svg = graph_render::render(&tiers::META.graph, Format::Svg, &Highlight::none());
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(balanced(&svg), "unbalanced tags:\n{svg}");
    assert!(svg.contains("size &gt; 2"), "branch labels are XML-escaped");
    assert!(!svg.contains("class=\"node visited\"") && !svg.contains("node current"));
    for name in ["load_deal", "mark_deal", "post_note"] {
        assert!(svg.contains(name), "{name} drawn");
    }
    snapshot("tiers.svg", &svg);
}

#[test]
fn run_highlight_marks_the_path_and_the_position() {
    let graph = &tiers::META.graph;
    let post = graph
        .nodes
        .iter()
        .find(|n| matches!(&n.kind, chain_runtime::graph::NodeKind::Step { step, .. } if step.name == "post_note"))
        .unwrap()
        .id;
    let hl = Highlight::for_run(graph, post, ["load_deal", "mark_deal"]);
    assert_eq!(
        hl.visited.len(),
        4,
        "start, two passed steps, the current one"
    );
    let svg = graph_render::svg(graph, &hl);
    assert!(balanced(&svg));
    assert!(svg.contains(&format!("<g class=\"node current\" id=\"n{post}\">")));
    assert_eq!(svg.matches("class=\"node visited\"").count(), 3);
    assert!(
        svg.matches("class=\"edge taken\"").count() >= 3,
        "start→load→mark→post"
    );
    let dot = graph_render::dot(graph, &hl);
    assert!(dot.contains(&format!("n{post} [label=")));
    assert_eq!(dot.matches("penwidth=3").count(), 1);
    snapshot("tiers-run.svg", &svg);
}

#[test]
fn format_parses_and_refuses_unknown_names() {
    assert_eq!("svg".parse::<Format>(), Ok(Format::Svg));
    assert_eq!("dot".parse::<Format>(), Ok(Format::Dot));
    assert_eq!("mermaid".parse::<Format>(), Ok(Format::Mermaid));
    let err = "png".parse::<Format>().unwrap_err();
    assert!(err.contains("svg, mermaid or dot"), "{err}");
}
