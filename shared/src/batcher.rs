//! The aggregation queue's core: items accumulate per group key and a group
//! is released when it reaches the batch size or its oldest item has waited
//! the flush interval. Pure logic with an explicit clock, tested without a broker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Group<T> {
    oldest: Instant,
    items: Vec<T>,
}

pub struct Batcher<T> {
    batch_size: usize,
    flush_after: Duration,
    groups: HashMap<String, Group<T>>,
}

impl<T> Batcher<T> {
    pub fn new(batch_size: usize, flush_after: Duration) -> Batcher<T> {
        Batcher { batch_size: batch_size.max(1), flush_after, groups: HashMap::new() }
    }

    /// Adds an item; returns its group's batch when that reached the batch size.
    pub fn push(&mut self, key: &str, item: T, now: Instant) -> Option<Vec<T>> {
        let group =
            self.groups.entry(key.to_string()).or_insert_with(|| Group { oldest: now, items: Vec::new() });
        group.items.push(item);
        if group.items.len() >= self.batch_size {
            return self.groups.remove(key).map(|g| g.items);
        }
        None
    }

    /// When the next group becomes due, if any group is waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups.values().map(|g| g.oldest + self.flush_after).min()
    }

    /// Releases every group whose oldest item has waited the flush interval.
    pub fn take_due(&mut self, now: Instant) -> Vec<(String, Vec<T>)> {
        let due: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| g.oldest + self.flush_after <= now)
            .map(|(k, _)| k.clone())
            .collect();
        due.into_iter().filter_map(|k| self.groups.remove(&k).map(|g| (k, g.items))).collect()
    }

    /// Releases everything (at shutdown).
    pub fn drain(&mut self) -> Vec<(String, Vec<T>)> {
        self.groups.drain().map(|(k, g)| (k, g.items)).collect()
    }

    pub fn len(&self) -> usize {
        self.groups.values().map(|g| g.items.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_group_is_released_at_batch_size() {
        let mut b = Batcher::new(3, Duration::from_millis(500));
        let t = Instant::now();
        assert!(b.push("standard", 1, t).is_none());
        assert!(b.push("express", 2, t).is_none());
        assert!(b.push("standard", 3, t).is_none());
        assert_eq!(b.push("standard", 4, t), Some(vec![1, 3, 4]));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn groups_flush_when_their_oldest_item_waited_long_enough() {
        let mut b = Batcher::new(25, Duration::from_millis(500));
        let t = Instant::now();
        b.push("standard", 1, t);
        b.push("express", 2, t + Duration::from_millis(300));
        assert_eq!(b.next_deadline(), Some(t + Duration::from_millis(500)));
        assert!(b.take_due(t + Duration::from_millis(499)).is_empty());
        assert_eq!(b.take_due(t + Duration::from_millis(500)), vec![("standard".to_string(), vec![1])]);
        assert_eq!(b.next_deadline(), Some(t + Duration::from_millis(800)));
        assert_eq!(b.drain(), vec![("express".to_string(), vec![2])]);
        assert!(b.is_empty());
    }
}
