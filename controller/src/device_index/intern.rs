//! One copy of each name and label set shared by every device that has it: a fleet of a
//! million devices names a handful of revisions and carries a few distinct label sets.
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::rollout::Name;

pub type Labels = BTreeMap<String, String>;

#[derive(Default)]
pub struct Interner {
    names: HashSet<Name>,
    labels: HashSet<Arc<Labels>>,
    /// Insertions since the last sweep: sweeping only once they are half of what is kept makes
    /// forgetting unused entries cost O(1) amortised per insertion.
    added: usize,
}

impl Interner {
    pub fn name(&mut self, s: &str) -> Name {
        if let Some(n) = self.names.get(s) {
            return n.clone();
        }
        self.added += 1;
        let n: Name = s.into();
        self.names.insert(n.clone());
        n
    }

    pub fn labels(&mut self, labels: &Labels) -> Arc<Labels> {
        if let Some(l) = self.labels.get(labels) {
            return l.clone();
        }
        self.added += 1;
        let l = Arc::new(labels.clone());
        self.labels.insert(l.clone());
        l
    }

    /// Forgets what only the interner still holds, now and then.
    pub fn sweep(&mut self) {
        if self.added < (self.names.len() + self.labels.len()) / 2 {
            return;
        }
        self.names.retain(|n| Arc::strong_count(n) > 1);
        self.labels.retain(|l| Arc::strong_count(l) > 1);
        self.added = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_and_label_sets_are_one_allocation_until_unused() {
        let mut i = Interner::default();
        let a = i.name("f-0123456789");
        let b = i.name("f-0123456789");
        assert!(Arc::ptr_eq(&a, &b));
        let labels: Labels = [("site".to_string(), "paris".to_string())].into();
        assert!(Arc::ptr_eq(&i.labels(&labels), &i.labels(&labels)));
        drop((a, b));
        for n in 0..10 {
            i.name(&format!("other-{n}"));
        }
        i.sweep();
        assert!(i.names.is_empty() && i.labels.is_empty());
    }
}
