//! The pure part of a publish: what is in etcd versus what should be there.

use std::collections::BTreeMap;

/// A key's value and the revision that last wrote it, as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) value: Vec<u8>,
    pub(crate) mod_revision: i64,
}

/// One write. `expected_mod_revision` is what the read saw (0 for an absent key); the write is
/// guarded by it so a concurrent change makes the transaction fail rather than be overwritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        expected_mod_revision: i64,
    },
    Delete {
        key: Vec<u8>,
        expected_mod_revision: i64,
    },
}

impl Op {
    pub(crate) fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }

    pub(crate) fn expected_mod_revision(&self) -> i64 {
        match self {
            Op::Put {
                expected_mod_revision,
                ..
            }
            | Op::Delete {
                expected_mod_revision,
                ..
            } => *expected_mod_revision,
        }
    }
}

/// The writes that turn `stored` into `desired`, in key order, and how many keys already match.
pub(crate) fn diff(
    stored: &BTreeMap<Vec<u8>, Stored>,
    desired: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> (Vec<Op>, usize) {
    let mut ops = Vec::new();
    let mut unchanged = 0;
    for (key, value) in desired {
        match stored.get(key) {
            Some(have) if have.value == *value => unchanged += 1,
            have => ops.push(Op::Put {
                key: key.clone(),
                value: value.clone(),
                expected_mod_revision: have.map_or(0, |h| h.mod_revision),
            }),
        }
    }
    for (key, have) in stored {
        if !desired.contains_key(key) {
            ops.push(Op::Delete {
                key: key.clone(),
                expected_mod_revision: have.mod_revision,
            });
        }
    }
    ops.sort_by(|a, b| a.key().cmp(b.key()));
    (ops, unchanged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(entries: &[(&str, &str, i64)]) -> BTreeMap<Vec<u8>, Stored> {
        entries
            .iter()
            .map(|(k, v, rev)| {
                let s = Stored {
                    value: v.as_bytes().to_vec(),
                    mod_revision: *rev,
                };
                (k.as_bytes().to_vec(), s)
            })
            .collect()
    }

    fn desired(entries: &[(&str, &str)]) -> BTreeMap<Vec<u8>, Vec<u8>> {
        entries
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn only_changes_are_written_each_guarded_by_what_was_read() {
        let have = stored(&[("a", "1", 5), ("b", "2", 6), ("c", "3", 7)]);
        let want = desired(&[("a", "1"), ("b", "20"), ("d", "4")]);
        let (ops, unchanged) = diff(&have, &want);
        assert_eq!(unchanged, 1);
        assert_eq!(
            ops,
            vec![
                Op::Put {
                    key: b"b".to_vec(),
                    value: b"20".to_vec(),
                    expected_mod_revision: 6
                },
                Op::Delete {
                    key: b"c".to_vec(),
                    expected_mod_revision: 7
                },
                Op::Put {
                    key: b"d".to_vec(),
                    value: b"4".to_vec(),
                    expected_mod_revision: 0
                },
            ]
        );
    }

    #[test]
    fn equal_sets_need_no_writes() {
        let have = stored(&[("a", "1", 5)]);
        let (ops, unchanged) = diff(&have, &desired(&[("a", "1")]));
        assert!(ops.is_empty());
        assert_eq!(unchanged, 1);
    }

    #[test]
    fn empty_desired_deletes_everything() {
        let have = stored(&[("a", "1", 5), ("b", "", 9)]);
        let (ops, unchanged) = diff(&have, &BTreeMap::new());
        assert_eq!(unchanged, 0);
        assert!(ops.iter().all(|op| matches!(op, Op::Delete { .. })));
        assert_eq!(ops.len(), 2);
    }
}
