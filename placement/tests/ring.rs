//! Properties of the placement rings, through the public API only.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cinder_placement::{
    executor_for, ExecutorRing, Jurisdiction, NodeId, NodeSpec, PlacementError, Ring, RingConfig,
    DEFAULT_VNODES_PER_WEIGHT,
};
use proptest::prelude::*;

/// Deterministic pseudo-random ids (splitmix64): proptest picks the seed, so a failure replays.
fn ids(seed: u64, count: usize) -> Vec<[u8; 32]> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..count)
        .map(|_| {
            let mut id = [0u8; 32];
            for chunk in id.chunks_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes());
            }
            id
        })
        .collect()
}

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn node_names(count: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set("[a-z][a-z0-9.:_-]{0,15}", count)
        .prop_map(|names| names.into_iter().collect())
}

fn owner_counts(ring: &Ring, ids: &[[u8; 32]], j: Option<Jurisdiction>) -> HashMap<NodeId, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        *counts.entry(ring.owner(id, j).unwrap()).or_insert(0) += 1;
    }
    counts
}

fn jurisdiction() -> impl Strategy<Value = Option<Jurisdiction>> {
    prop::option::of(prop::sample::select(Jurisdiction::ALL.to_vec()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn three_equal_nodes_balance_within_15_percent(names in node_names(3), seed in any::<u64>()) {
        let ring = Ring::new(names.iter().map(|n| NodeSpec::new(node(n)))).unwrap();
        let ids = ids(seed, 30_000);
        let counts = owner_counts(&ring, &ids, None);
        prop_assert_eq!(counts.len(), 3);
        for (node, count) in &counts {
            let share = *count as f64 / 10_000.0;
            prop_assert!((0.85..=1.15).contains(&share), "{node} owns {count} of 30000 ids");
        }
    }

    #[test]
    fn a_fourth_node_takes_about_a_quarter_and_nothing_else_moves(
        names in node_names(4),
        seed in any::<u64>(),
    ) {
        let (old, new) = names.split_at(3);
        let before = Ring::new(old.iter().map(|n| NodeSpec::new(node(n)))).unwrap();
        let after = Ring::new(names.iter().map(|n| NodeSpec::new(node(n)))).unwrap();
        let newcomer = node(&new[0]);
        let ids = ids(seed, 30_000);
        let mut moved = 0;
        for id in &ids {
            let (was, is) = (before.owner(id, None).unwrap(), after.owner(id, None).unwrap());
            if was != is {
                prop_assert_eq!(&is, &newcomer, "an id moved between two old nodes");
                moved += 1;
            }
        }
        let fraction = moved as f64 / ids.len() as f64;
        prop_assert!((0.20..=0.30).contains(&fraction), "{moved} of 30000 ids moved");
    }

    #[test]
    fn weights_are_respected(
        names in node_names(3),
        weights in prop::collection::vec(1u32..=4, 3),
        seed in any::<u64>(),
    ) {
        let ring = Ring::new(
            names.iter().zip(&weights).map(|(n, w)| NodeSpec::new(node(n)).weight(*w)),
        )
        .unwrap();
        let ids = ids(seed, 30_000);
        let counts = owner_counts(&ring, &ids, None);
        let total_weight: u32 = weights.iter().sum();
        for (name, weight) in names.iter().zip(&weights) {
            let expected = ids.len() as f64 * f64::from(*weight) / f64::from(total_weight);
            let got = counts.get(&node(name)).copied().unwrap_or(0) as f64;
            prop_assert!(
                (got / expected - 1.0).abs() <= 0.15,
                "{name} (weight {weight}) owns {got}, expected ~{expected:.0}"
            );
        }
    }

    /// Random topologies (small virtual-node counts so many shapes are cheap): an id's owner and
    /// every candidate carry its jurisdiction's tag, candidates list each eligible node once
    /// with the owner first, and no eligible node is an error, never a fallback.
    #[test]
    fn jurisdiction_is_never_violated(
        nodes in prop::collection::btree_map("[a-z][a-z0-9]{0,6}", (0u8..16, 1u32..=3), 1..8),
        vnodes in 1usize..48,
        targets in prop::collection::vec((any::<[u8; 32]>(), jurisdiction()), 64),
    ) {
        let specs: Vec<NodeSpec> = nodes
            .iter()
            .map(|(name, (mask, weight))| {
                let mut spec = NodeSpec::new(node(name)).weight(*weight);
                for (bit, j) in Jurisdiction::ALL.into_iter().enumerate() {
                    if mask & (1 << bit) != 0 {
                        spec = spec.allow(j);
                    }
                }
                spec
            })
            .collect();
        let ring = Ring::with_config(specs.clone(), RingConfig { vnodes_per_weight: vnodes }).unwrap();
        for (id, j) in &targets {
            let eligible: BTreeSet<&NodeId> =
                specs.iter().filter(|s| s.allows(*j)).map(|s| &s.id).collect();
            prop_assert_eq!(ring.eligible_nodes(*j), eligible.len());
            if eligible.is_empty() {
                prop_assert_eq!(ring.owner(id, *j), Err(PlacementError::NoEligibleNode(*j)));
                prop_assert!(ring.candidates(id, *j).is_err());
                continue;
            }
            let owner = ring.owner(id, *j).unwrap();
            prop_assert!(ring.node(&owner).unwrap().allows(*j));
            let candidates: Vec<&NodeId> = ring.candidates(id, *j).unwrap().collect();
            prop_assert_eq!(candidates[0], &owner);
            prop_assert_eq!(candidates.len(), eligible.len());
            prop_assert_eq!(candidates.iter().copied().collect::<BTreeSet<_>>(), eligible);
        }
    }

    /// The answer depends on the set of nodes, not on the order they were listed in or on which
    /// ring instance is asked.
    #[test]
    fn placement_is_deterministic(
        names in node_names(5),
        order in Just((0..5usize).collect::<Vec<_>>()).prop_shuffle(),
        targets in prop::collection::vec((any::<[u8; 32]>(), jurisdiction()), 32),
    ) {
        let spec = |i: usize| {
            NodeSpec::new(node(&names[i])).weight(1 + i as u32 % 2).allow(Jurisdiction::ALL[i % 4])
        };
        let a = Ring::new((0..5).map(spec)).unwrap();
        let b = Ring::new(order.iter().map(|&i| spec(i))).unwrap();
        for (id, j) in &targets {
            prop_assert_eq!(a.owner(id, *j), b.owner(id, *j));
            prop_assert_eq!(a.owner(id, *j), a.owner(id, *j));
            let ca: Vec<_> = a.candidates(id, *j).unwrap().cloned().collect();
            let cb: Vec<_> = b.candidates(id, *j).unwrap().cloned().collect();
            prop_assert_eq!(ca, cb);
        }
    }

    /// Adding a node without the `eu` tag never moves an `eu` id; adding one with it moves `eu`
    /// ids only onto the newcomer.
    #[test]
    fn adding_nodes_moves_jurisdiction_ids_only_to_eligible_newcomers(
        names in node_names(5),
        seed in any::<u64>(),
    ) {
        let eu = Some(Jurisdiction::Eu);
        let base: Vec<NodeSpec> = vec![
            NodeSpec::new(node(&names[0])).allow(Jurisdiction::Eu),
            NodeSpec::new(node(&names[1])).allow(Jurisdiction::Eu),
            NodeSpec::new(node(&names[2])).allow(Jurisdiction::Us),
        ];
        let before = Ring::new(base.clone()).unwrap();
        let with_us = Ring::new(base.iter().cloned().chain([NodeSpec::new(node(&names[3])).allow(Jurisdiction::Us)])).unwrap();
        let newcomer = node(&names[4]);
        let with_eu = Ring::new(base.iter().cloned().chain([NodeSpec::new(newcomer.clone()).allow(Jurisdiction::Eu)])).unwrap();
        for id in ids(seed, 2_000) {
            let was = before.owner(&id, eu).unwrap();
            prop_assert_eq!(&with_us.owner(&id, eu).unwrap(), &was);
            let is = with_eu.owner(&id, eu).unwrap();
            prop_assert!(is == was || is == newcomer);
        }
    }
}

#[test]
fn executor_threads_share_the_ring_code_and_balance() {
    let ids = ids(7, 30_000);
    for threads in [2usize, 3, 4] {
        let ring = ExecutorRing::new(threads).unwrap();
        assert_eq!(ring.threads(), threads);
        let mut counts = vec![0usize; threads];
        for id in &ids {
            let t = ring.executor_for(id);
            assert_eq!(
                executor_for(id, threads),
                t,
                "free function and ring disagree"
            );
            counts[t] += 1;
        }
        let fair = ids.len() as f64 / threads as f64;
        for (t, count) in counts.iter().enumerate() {
            let share = *count as f64 / fair;
            assert!(
                (0.85..=1.15).contains(&share),
                "thread {t} of {threads} runs {count}"
            );
        }
    }
}

#[test]
fn executor_for_alternating_thread_counts_stays_consistent() {
    // The free function caches one ring per calling thread; switching counts must rebuild it.
    let ids = ids(11, 500);
    let two = ExecutorRing::new(2).unwrap();
    let five = ExecutorRing::new(5).unwrap();
    for id in &ids {
        assert_eq!(executor_for(id, 2), two.executor_for(id));
        assert_eq!(executor_for(id, 5), five.executor_for(id));
        assert_eq!(executor_for(id, 1), 0);
        assert_eq!(executor_for(id, 0), 0);
    }
}

#[test]
fn adding_an_executor_thread_moves_ids_only_to_it() {
    let (four, five) = (ExecutorRing::new(4).unwrap(), ExecutorRing::new(5).unwrap());
    for id in ids(3, 10_000) {
        let (was, is) = (four.executor_for(&id), five.executor_for(&id));
        assert!(was == is || is == 4, "id moved from thread {was} to {is}");
    }
}

#[test]
fn one_thread_and_one_node_own_everything() {
    let one = ExecutorRing::new(1).unwrap();
    let ring = Ring::single(node("local"));
    for id in ids(5, 1_000) {
        assert_eq!(one.executor_for(&id), 0);
        assert_eq!(ring.owner(&id, None).unwrap(), node("local"));
        for j in Jurisdiction::ALL {
            assert_eq!(ring.owner(&id, Some(j)).unwrap(), node("local"));
            assert_eq!(ring.candidates(&id, Some(j)).unwrap().count(), 1);
        }
    }
}

#[test]
fn bad_topologies_are_clear_errors() {
    assert_eq!(Ring::new([]).unwrap_err(), PlacementError::Empty);
    assert_eq!(
        Ring::new([NodeSpec::new(node("a")), NodeSpec::new(node("a")).weight(2)]).unwrap_err(),
        PlacementError::DuplicateNode(node("a"))
    );
    assert_eq!(
        Ring::new([NodeSpec::new(node("a")).weight(0)]).unwrap_err(),
        PlacementError::ZeroWeight(node("a"))
    );
    assert!(matches!(
        Ring::new([NodeSpec::new(node("a")).weight(u32::MAX)]),
        Err(PlacementError::TooManyVirtualNodes { .. })
    ));
    assert!(matches!(
        Ring::with_config(
            [NodeSpec::new(node("a"))],
            RingConfig {
                vnodes_per_weight: 0
            }
        ),
        Err(PlacementError::TooManyVirtualNodes { .. })
    ));
    assert_eq!(ExecutorRing::new(0).unwrap_err(), PlacementError::NoThreads);
    assert_eq!(
        ExecutorRing::new(cinder_placement::MAX_THREADS + 1).unwrap_err(),
        PlacementError::TooManyThreads(cinder_placement::MAX_THREADS + 1)
    );

    let ring = Ring::new([NodeSpec::new(node("a")).allow(Jurisdiction::Us)]).unwrap();
    let err = ring
        .owner(&[0; 32], Some(Jurisdiction::FedrampHigh))
        .unwrap_err();
    assert_eq!(
        err,
        PlacementError::NoEligibleNode(Some(Jurisdiction::FedrampHigh))
    );
    assert_eq!(
        err.to_string(),
        "no node may hold objects of jurisdiction fedramp-high"
    );
    assert!(ring.owner(&[0; 32], Some(Jurisdiction::Us)).is_ok());
}

#[test]
fn ring_reports_its_shape() {
    let ring = Ring::new([
        NodeSpec::new(node("b"))
            .weight(2)
            .allow(Jurisdiction::Eu)
            .region("eu-west"),
        NodeSpec::new(node("a")),
    ])
    .unwrap();
    assert_eq!(ring.virtual_nodes(), 3 * DEFAULT_VNODES_PER_WEIGHT);
    assert_eq!(ring.config(), RingConfig::default());
    let ids: Vec<&str> = ring.nodes().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(
        ring.node(&node("b")).unwrap().tags.region.as_deref(),
        Some("eu-west")
    );
    assert_eq!(ring.eligible_nodes(None), 2);
    assert_eq!(ring.eligible_nodes(Some(Jurisdiction::Eu)), 1);
    assert_eq!(ring.eligible_nodes(Some(Jurisdiction::Us)), 0);
}

#[test]
fn rings_are_shareable_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Ring>();
    send_sync::<ExecutorRing>();
    send_sync::<NodeId>();
    send_sync::<PlacementError>();
}

/// Pinned answers: every node of a cluster, built by any compiler on any platform, must agree
/// on owners, and stored data must not silently change owners across releases. If this fails,
/// the hash positions changed: that is a data-migration event, not a test to update lightly.
#[test]
fn owners_are_pinned_across_builds() {
    let ring = Ring::new([
        NodeSpec::new(node("node-a")).allow(Jurisdiction::Eu),
        NodeSpec::new(node("node-b")).weight(2),
        NodeSpec::new(node("node-c"))
            .allow(Jurisdiction::Eu)
            .allow(Jurisdiction::Us),
    ])
    .unwrap();
    let mut got = BTreeMap::new();
    for (i, id) in ids(42, 8).iter().enumerate() {
        let all: Vec<String> = ring
            .candidates(id, None)
            .unwrap()
            .map(|n| n.to_string())
            .collect();
        let eu = ring.owner(id, Some(Jurisdiction::Eu)).unwrap().to_string();
        got.insert(i, (all.join(","), eu, executor_for(id, 4)));
    }
    let pin = |all: &str, eu: &str, thread: usize| (all.to_owned(), eu.to_owned(), thread);
    let pinned = BTreeMap::from([
        (0, pin("node-c,node-b,node-a", "node-c", 3)),
        (1, pin("node-b,node-c,node-a", "node-c", 3)),
        (2, pin("node-b,node-a,node-c", "node-a", 2)),
        (3, pin("node-b,node-c,node-a", "node-c", 2)),
        (4, pin("node-a,node-b,node-c", "node-a", 3)),
        (5, pin("node-b,node-c,node-a", "node-c", 1)),
        (6, pin("node-b,node-a,node-c", "node-a", 1)),
        (7, pin("node-a,node-c,node-b", "node-a", 2)),
    ]);
    assert_eq!(got, pinned);
}

/// Threads and nodes hash the same id with different members; the ids one node owns must still
/// spread evenly over its threads (a correlation between the two rings would pile them up).
#[test]
fn a_nodes_share_spreads_evenly_over_its_threads() {
    let ring = Ring::new(["a", "b", "c"].map(|n| NodeSpec::new(node(n)))).unwrap();
    let threads = ExecutorRing::new(2).unwrap();
    let mut counts = [0usize; 2];
    let mut owned = 0;
    for id in ids(99, 60_000) {
        if ring.owner(&id, None).unwrap() == node("b") {
            owned += 1;
            counts[threads.executor_for(&id)] += 1;
        }
    }
    for count in counts {
        let share = count as f64 / (owned as f64 / 2.0);
        assert!((0.85..=1.15).contains(&share), "{counts:?} of {owned}");
    }
}
