//! The workflow definition (placeholder seam, filled in by the definition work):
//! the processes a stack runs.

/// Every long-running process of a stack, the tracker first: what scripts,
/// compose, tests and bench start.
pub fn processes() -> Vec<&'static str> {
    let mut all = vec!["tracker"];
    all.extend(crate::Node::ALL.iter().map(|node| node.name()));
    all
}
