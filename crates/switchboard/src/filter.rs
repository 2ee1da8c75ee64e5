//! Tag filters: which publications of a channel a subscriber wants, chosen by the publications'
//! `tags` (a string → string map the server API's `publish` may attach).
//!
//! A filter arrives as the protocol's `FilterNode` tree (the SDK's `tagsFilter`), is checked
//! once at subscribe ([`Filter::from_node`]: known operators, bounded size) and then evaluated
//! against each publication's tags ([`Filter::matches`]). It owns no state and sees no
//! connection: the hub keeps one `Arc<Filter>` per distinct filter of a channel and evaluates
//! each once per publication, whatever the number of subscribers that share it.

use std::collections::BTreeMap;

use crate::wire::FilterNode;

/// A publication's tags.
pub type Tags = BTreeMap<String, String>;

/// The most nodes one filter may have, and its deepest nesting: a filter is evaluated for
/// every publication of its channel, so its cost is bounded.
const MAX_NODES: usize = 64;
const MAX_DEPTH: usize = 8;
/// The most values of one `in`/`nin`.
const MAX_VALUES: usize = 256;

/// A filter the server will not evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// An `op` that is not `and`, `or` or `not` (or `not` without exactly one operand).
    #[error("unknown filter operation {0:?}")]
    Operation(String),
    /// A `cmp` that is not one of the comparisons.
    #[error("unknown filter comparison {0:?}")]
    Comparison(String),
    /// More than 64 nodes, nesting deeper than 8, or more than 256 values.
    #[error("filter too large")]
    TooLarge,
}

/// One comparison of a tag's value.
#[derive(Debug, Clone, PartialEq)]
enum Comparison {
    Eq(String),
    Neq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    StartsWith(String),
    EndsWith(String),
    Contains(String),
    /// `lt`, `lte`, `gt`, `gte`: both sides read as numbers; a side that is not a number
    /// never matches.
    Number(Order, String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Order {
    Lt,
    Lte,
    Gt,
    Gte,
}

/// A checked tag filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter(Node);

/// One node of a checked filter.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// A comparison of tag `key`.
    Compare { key: String, comparison: Comparison },
    /// Every operand matches (an empty `and` matches everything).
    And(Vec<Node>),
    /// One operand matches (an empty `or` matches nothing).
    Or(Vec<Node>),
    /// The operand does not match.
    Not(Box<Node>),
}

impl Filter {
    /// Checks a filter tree from a subscribe request.
    ///
    /// # Errors
    /// [`FilterError`] for an unknown operation or comparison, or a tree past the bounds.
    pub fn from_node(node: &FilterNode) -> Result<Filter, FilterError> {
        let mut nodes = 0;
        Node::build(node, 0, &mut nodes).map(Filter)
    }

    /// Whether a publication with `tags` (none: no tags) passes.
    pub fn matches(&self, tags: Option<&Tags>) -> bool {
        self.0.matches(tags)
    }
}

impl Node {
    fn build(node: &FilterNode, depth: usize, nodes: &mut usize) -> Result<Node, FilterError> {
        *nodes += 1;
        if *nodes > MAX_NODES || depth > MAX_DEPTH || node.vals.len() > MAX_VALUES {
            return Err(FilterError::TooLarge);
        }
        let mut operands = || -> Result<Vec<Node>, FilterError> {
            node.nodes
                .iter()
                .map(|child| Node::build(child, depth + 1, nodes))
                .collect()
        };
        match node.op.as_str() {
            "" => Ok(Node::Compare {
                key: node.key.clone(),
                comparison: comparison(node)?,
            }),
            "and" => Ok(Node::And(operands()?)),
            "or" => Ok(Node::Or(operands()?)),
            "not" if node.nodes.len() == 1 => {
                let mut operands = operands()?;
                Ok(Node::Not(Box::new(operands.remove(0))))
            }
            other => Err(FilterError::Operation(other.to_owned())),
        }
    }

    fn matches(&self, tags: Option<&Tags>) -> bool {
        match self {
            Node::Compare { key, comparison } => {
                let value = tags.and_then(|tags| tags.get(key)).map(String::as_str);
                compare(comparison, value)
            }
            Node::And(operands) => operands.iter().all(|f| f.matches(tags)),
            Node::Or(operands) => operands.iter().any(|f| f.matches(tags)),
            Node::Not(operand) => !operand.matches(tags),
        }
    }
}

fn comparison(node: &FilterNode) -> Result<Comparison, FilterError> {
    let val = || node.val.clone();
    Ok(match node.cmp.as_str() {
        "eq" => Comparison::Eq(val()),
        "neq" => Comparison::Neq(val()),
        "in" => Comparison::In(node.vals.clone()),
        "nin" => Comparison::NotIn(node.vals.clone()),
        "ex" => Comparison::Exists,
        "nex" => Comparison::NotExists,
        "sw" => Comparison::StartsWith(val()),
        "ew" => Comparison::EndsWith(val()),
        "ct" => Comparison::Contains(val()),
        "lt" => Comparison::Number(Order::Lt, val()),
        "lte" => Comparison::Number(Order::Lte, val()),
        "gt" => Comparison::Number(Order::Gt, val()),
        "gte" => Comparison::Number(Order::Gte, val()),
        other => return Err(FilterError::Comparison(other.to_owned())),
    })
}

/// A missing tag equals nothing and is in no set: `eq`, `in`, `sw`, `ew`, `ct` and the
/// number comparisons fail, `neq` and `nin` pass.
fn compare(comparison: &Comparison, value: Option<&str>) -> bool {
    match (comparison, value) {
        (Comparison::Exists, value) => value.is_some(),
        (Comparison::NotExists, value) => value.is_none(),
        (Comparison::Neq(want), value) => value != Some(want.as_str()),
        (Comparison::NotIn(set), value) => value.is_none_or(|v| !set.iter().any(|s| s == v)),
        (_, None) => false,
        (Comparison::Eq(want), Some(value)) => value == want,
        (Comparison::In(set), Some(value)) => set.iter().any(|s| s == value),
        (Comparison::StartsWith(prefix), Some(value)) => value.starts_with(prefix.as_str()),
        (Comparison::EndsWith(suffix), Some(value)) => value.ends_with(suffix.as_str()),
        (Comparison::Contains(part), Some(value)) => value.contains(part.as_str()),
        (Comparison::Number(order, want), Some(value)) => {
            match (value.trim().parse::<f64>(), want.trim().parse::<f64>()) {
                (Ok(have), Ok(want)) => match order {
                    Order::Lt => have < want,
                    Order::Lte => have <= want,
                    Order::Gt => have > want,
                    Order::Gte => have >= want,
                },
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(key: &str, cmp: &str, val: &str) -> FilterNode {
        FilterNode {
            key: key.into(),
            cmp: cmp.into(),
            val: val.into(),
            ..FilterNode::default()
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn comparisons_follow_their_names_and_a_missing_tag_matches_only_negations() {
        let t = tags(&[("ticker", "BTC-USD"), ("price", "50001.5")]);
        let cases = [
            (leaf("ticker", "eq", "BTC-USD"), true, false),
            (leaf("ticker", "neq", "BTC-USD"), false, true),
            (leaf("ticker", "sw", "BTC"), true, false),
            (leaf("ticker", "ew", "USD"), true, false),
            (leaf("ticker", "ct", "C-U"), true, false),
            (leaf("ticker", "ex", ""), true, false),
            (leaf("ticker", "nex", ""), false, true),
            (leaf("price", "gt", "50000"), true, false),
            (leaf("price", "gte", "50001.5"), true, false),
            (leaf("price", "lt", "50000"), false, false),
            (leaf("price", "lte", "1e6"), true, false),
            (leaf("ticker", "gt", "1"), false, false),
        ];
        for (node, with_tags, without) in cases {
            let filter = Filter::from_node(&node).unwrap();
            assert_eq!(filter.matches(Some(&t)), with_tags, "{node:?}");
            assert_eq!(filter.matches(None), without, "{node:?} on no tags");
        }
    }

    #[test]
    fn sets_and_logic_combine() {
        let in_set = FilterNode {
            key: "ticker".into(),
            cmp: "in".into(),
            vals: vec!["ETH".into(), "BTC".into()],
            ..FilterNode::default()
        };
        let not_in = FilterNode {
            cmp: "nin".into(),
            ..in_set.clone()
        };
        let both = FilterNode {
            op: "and".into(),
            nodes: vec![in_set.clone(), leaf("price", "gt", "10")],
            ..FilterNode::default()
        };
        let negated = FilterNode {
            op: "not".into(),
            nodes: vec![both.clone()],
            ..FilterNode::default()
        };
        let btc = tags(&[("ticker", "BTC"), ("price", "11")]);
        let sol = tags(&[("ticker", "SOL"), ("price", "11")]);
        let check = |node: &FilterNode, t: &Tags| Filter::from_node(node).unwrap().matches(Some(t));
        assert!(check(&in_set, &btc) && !check(&in_set, &sol));
        assert!(!check(&not_in, &btc) && check(&not_in, &sol));
        assert!(check(&both, &btc) && !check(&both, &sol));
        assert!(!check(&negated, &btc) && check(&negated, &sol));
        let either = FilterNode {
            op: "or".into(),
            nodes: vec![leaf("ticker", "eq", "SOL"), leaf("ticker", "eq", "BTC")],
            ..FilterNode::default()
        };
        assert!(check(&either, &btc) && check(&either, &sol));
    }

    #[test]
    fn unknown_operators_and_oversized_trees_are_refused() {
        assert_eq!(
            Filter::from_node(&leaf("a", "like", "x")),
            Err(FilterError::Comparison("like".into()))
        );
        let xor = FilterNode {
            op: "xor".into(),
            ..FilterNode::default()
        };
        assert_eq!(
            Filter::from_node(&xor),
            Err(FilterError::Operation("xor".into()))
        );
        let not_two = FilterNode {
            op: "not".into(),
            nodes: vec![leaf("a", "ex", ""), leaf("b", "ex", "")],
            ..FilterNode::default()
        };
        assert!(Filter::from_node(&not_two).is_err());
        let mut deep = leaf("a", "ex", "");
        for _ in 0..=MAX_DEPTH {
            deep = FilterNode {
                op: "not".into(),
                nodes: vec![deep],
                ..FilterNode::default()
            };
        }
        assert_eq!(Filter::from_node(&deep), Err(FilterError::TooLarge));
        let wide = FilterNode {
            op: "or".into(),
            nodes: vec![leaf("a", "ex", ""); MAX_NODES],
            ..FilterNode::default()
        };
        assert_eq!(Filter::from_node(&wide), Err(FilterError::TooLarge));
    }
}
