use ember_node::FunctionHoldings;

use super::*;

fn h(idle: u32, hibernated: u32, snapshot: bool, image: bool) -> FunctionHoldings {
    FunctionHoldings {
        code_hash: "c".into(),
        idle,
        live: idle,
        hibernated,
        snapshot,
        image,
        ..FunctionHoldings::default()
    }
}

fn cand<'a>(id: &'a str, h: Option<&'a FunctionHoldings>, in_flight: u32) -> Candidate<'a> {
    Candidate {
        id,
        holdings: h,
        in_flight,
        memory_mb: 0,
        own_in_flight: 0,
        pool_has_image: false,
    }
}

fn ids(nodes: &[Candidate<'_>]) -> Vec<String> {
    nodes.iter().map(|c| c.id.to_string()).collect()
}

#[test]
fn snapshot_aware_orders_by_tier_then_load() {
    let (warm, hib, snap, img, none) = (
        h(1, 0, false, false),
        h(0, 1, true, true),
        h(0, 0, true, true),
        h(0, 0, false, true),
        h(0, 0, false, false),
    );
    let mut nodes = vec![
        cand("none", Some(&none), 0),
        cand("img", Some(&img), 0),
        cand("snap-busy", Some(&snap), 5),
        cand("snap", Some(&snap), 1),
        cand("hib", Some(&hib), 9),
        cand("warm", Some(&warm), 50),
        cand("unknown", None, 0),
    ];
    SnapshotAware.rank("f", &mut nodes, 0);
    assert_eq!(
        ids(&nodes),
        ["warm", "hib", "snap", "snap-busy", "img", "none", "unknown"]
    );
    // The default ignores holdings.
    LeastLoaded.rank("f", &mut nodes, 0);
    assert_eq!(ids(&nodes)[..3], ["img", "none", "unknown"]);
    assert_eq!(ids(&nodes).last().unwrap(), "warm");
}

/// A node that restores the image from another node's memory ranks under one that has the
/// image, over one with nothing; without a node holding the image in memory it has nothing.
#[test]
fn the_pool_tier_needs_a_node_with_the_image_in_memory() {
    let img = FunctionHoldings {
        image_memory: true,
        ..h(0, 0, false, true)
    };
    let pooled = FunctionHoldings {
        image_pooled: true,
        ..h(0, 0, false, false)
    };
    let none = h(0, 0, false, false);
    let records: Vec<crate::record::NodeRecord> = Vec::new();
    assert!(!pool_has_image(&records, "f"));
    let mut nodes = vec![
        cand("none", Some(&none), 0),
        cand("pooled", Some(&pooled), 3),
        cand("img", Some(&img), 9),
    ];
    for c in &mut nodes {
        c.pool_has_image = true;
    }
    SnapshotAware.rank("f", &mut nodes, 0);
    assert_eq!(ids(&nodes), ["img", "pooled", "none"]);
    assert_eq!(Tier::of(&nodes[1]).as_str(), "pool");
    nodes[1].pool_has_image = false;
    assert_eq!(Tier::of(&nodes[1]), Tier::Nothing);
}

#[test]
fn an_idle_instance_this_gateway_already_took_is_not_warm() {
    let warm = h(1, 0, true, true);
    let mut taken = cand("a", Some(&warm), 1);
    taken.own_in_flight = 1;
    assert_eq!(Tier::of(&taken), Tier::Snapshot);
    let free = cand("b", Some(&warm), 0);
    assert_eq!(Tier::of(&free), Tier::Warm);
}

#[test]
fn equal_nodes_take_turns() {
    let img = h(0, 0, false, true);
    let firsts: Vec<String> = (0..3)
        .map(|turn| {
            let mut nodes = vec![
                cand("a", Some(&img), 0),
                cand("b", Some(&img), 0),
                cand("c", Some(&img), 0),
                cand("d", Some(&img), 3),
            ];
            SnapshotAware.rank("f", &mut nodes, turn);
            assert_eq!(nodes[3].id, "d");
            nodes[0].id.to_string()
        })
        .collect();
    assert_eq!(firsts, ["a", "b", "c"]);
}

#[test]
fn policies_by_name() {
    assert_eq!(by_name("snapshot-aware").unwrap().name(), "snapshot-aware");
    assert_eq!(by_name("least-loaded").unwrap().name(), "least-loaded");
    assert!(by_name("random").err().unwrap().contains("least-loaded"));
}
