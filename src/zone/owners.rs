//! A zone's records grouped by owner name and type, for validation and the snapshot build,
//! without a map: one vector of record numbers sorted by owner and type, and where each owner
//! begins in it. At 100,000 members a map of owner keys spent about 200 B per name (a copied
//! key, a cloned name, a node of the tree, a vector per type) during every load; this spends 8.
//!
//! Member CNAMEs take part without being written out as records: item numbers past the zone
//! file's records stand for the members, in order.

use std::cmp::Ordering;

use super::members::Member;
use super::name::{Name, label_offsets};
use super::{Location, Record, rtype};

/// One record as the checks see it: from the zone file, or a member's CNAME.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordRef<'a> {
    pub name: &'a Name,
    pub rtype: u16,
    pub ttl: u32,
    pub rdata: &'a [u8],
    pub location: &'a Location,
}

/// The owners of a zone's records, in case-insensitive wire order (the order of `Name::key`).
pub(crate) struct Owners<'a> {
    records: &'a [Record],
    members: &'a [Member],
    /// Item numbers sorted by owner, then type; file order within an RRset.
    order: Vec<u32>,
    /// Where each owner's items begin in `order`, then `order.len()`.
    bounds: Vec<u32>,
    /// Owner numbers by name (any case): an exact lookup is one hash probe instead of a binary
    /// search of case-folding comparisons (which took a tenth of a 100,000-member reload).
    /// About 6 B per owner, for the load only.
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

/// Compares two wire names as their lowercased keys would compare, without lowercasing a copy.
pub(crate) fn compare_keys(a: &[u8], b: &[u8]) -> Ordering {
    // A plain loop: the iterator `cmp` of two mapped iterators compiled to a closure per
    // byte, and this is the sort and binary-search comparison of every load (a tenth of a
    // 100,000-member `check`).
    for (&x, &y) in a.iter().zip(b) {
        if x != y {
            let (x, y) = (x.to_ascii_lowercase(), y.to_ascii_lowercase());
            if x != y {
                return x.cmp(&y);
            }
        }
    }
    a.len().cmp(&b.len())
}

/// The hash of a wire name as its lowercased key, without lowercasing a copy.
pub(crate) fn key_hash(state: &foldhash::fast::RandomState, wire: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = state.build_hasher();
    for chunk in wire.chunks(8) {
        let mut word = [0u8; 8];
        for (to, from) in word.iter_mut().zip(chunk) {
            *to = from.to_ascii_lowercase();
        }
        hasher.write_u64(u64::from_le_bytes(word));
    }
    hasher.write_usize(wire.len());
    hasher.finish()
}

/// A wire name's first eight octets lowercased, big-endian, zero-padded: ordered as
/// `compare_keys` orders the names wherever two prefixes differ (a name ends in its root
/// label, so a shorter name's padding compares as the longer's octets would against its end).
fn prefix_key(wire: &[u8]) -> u64 {
    let mut prefix = [0u8; 8];
    for (to, from) in prefix.iter_mut().zip(wire) {
        *to = from.to_ascii_lowercase();
    }
    u64::from_be_bytes(prefix)
}

/// The proper ancestors of a wire name, nearest first, down to the root: suffixes that start
/// on a label boundary, borrowed from `wire`.
pub(crate) fn ancestors(wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    label_offsets(wire).skip(1).map(|at| &wire[at..]).chain(
        // The root, unless the name is the root itself.
        (wire.len() > 1).then(|| &wire[wire.len() - 1..]),
    )
}

impl<'a> Owners<'a> {
    /// Groups `records` and the CNAMEs of `members`. The record count is bounded by the zone
    /// file size limit, far below `u32::MAX`.
    pub(crate) fn new(records: &'a [Record], members: &'a [Member]) -> Self {
        let mut owners = Owners {
            records,
            members,
            order: Vec::new(),
            bounds: Vec::new(),
            index: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        };
        let total = (records.len() + members.len()) as u32;
        // Sorted by each name's first octets (held beside the item number, so most comparisons
        // touch no name), then the whole name and the type. Stable, which keeps the records of
        // an RRset in file order, and quick on runs already in order (members files mostly
        // are: node1, node2...), where an unstable sort is not.
        let mut keyed: Vec<(u64, u32)> = (0..total)
            .map(|i| (prefix_key(owners.item(i).name.wire()), i))
            .collect();
        keyed.sort_by(|&(prefix_a, a), &(prefix_b, b)| {
            prefix_a.cmp(&prefix_b).then_with(|| {
                let (x, y) = (owners.item(a), owners.item(b));
                compare_keys(x.name.wire(), y.name.wire()).then(x.rtype.cmp(&y.rtype))
            })
        });
        let order: Vec<u32> = keyed.into_iter().map(|(_, i)| i).collect();
        let mut bounds = Vec::new();
        for pos in 0..order.len() {
            let new_owner = pos == 0 || {
                let (a, b) = (owners.item(order[pos - 1]), owners.item(order[pos]));
                !a.name.wire().eq_ignore_ascii_case(b.name.wire())
            };
            if new_owner {
                bounds.push(pos as u32);
            }
        }
        bounds.push(order.len() as u32);
        bounds.shrink_to_fit();
        owners.order = order;
        owners.bounds = bounds;
        let mut index = hashbrown::HashTable::with_capacity(owners.len());
        for k in 0..owners.len() {
            let hash = owners.hash_of(owners.owner(k).name().wire());
            index.insert_unique(hash, k as u32, |&j| {
                owners.hash_of(owners.owner(j as usize).name().wire())
            });
        }
        owners.index = index;
        owners
    }

    fn hash_of(&self, wire: &[u8]) -> u64 {
        key_hash(&self.hasher, wire)
    }

    /// Item `i`: a zone-file record, or past them a member's CNAME.
    pub(crate) fn item(&self, i: u32) -> RecordRef<'a> {
        let i = i as usize;
        match self.records.get(i) {
            Some(r) => RecordRef {
                name: &r.name,
                rtype: r.rtype,
                ttl: r.ttl,
                rdata: &r.rdata,
                location: &r.location,
            },
            None => {
                let m = &self.members[i - self.records.len()];
                RecordRef {
                    name: &m.name,
                    rtype: rtype::CNAME,
                    ttl: m.ttl,
                    rdata: m.target.wire(),
                    location: &m.location,
                }
            }
        }
    }

    /// Number of owner names.
    pub(crate) fn len(&self) -> usize {
        self.bounds.len() - 1
    }

    /// Owner number `k` (`k < len()`).
    pub(crate) fn owner(&self, k: usize) -> Owner<'_, 'a> {
        let (start, end) = (self.bounds[k] as usize, self.bounds[k + 1] as usize);
        Owner {
            owners: self,
            items: &self.order[start..end],
        }
    }

    /// Every owner, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Owner<'_, 'a>> {
        (0..self.len()).map(|k| self.owner(k))
    }

    /// The owner number of a wire name (any case): one hash probe.
    pub(crate) fn position(&self, wire: &[u8]) -> Option<usize> {
        self.index
            .find(self.hash_of(wire), |&k| {
                self.owner(k as usize).name().wire().eq_ignore_ascii_case(wire)
            })
            .map(|&k| k as usize)
    }

    /// Binary search for a wire name (any case): `Ok(owner number)`, or `Err(where it would be)`.
    /// Only a name that is no owner pays for the binary search; `position` when that place is
    /// not needed.
    pub(crate) fn search(&self, wire: &[u8]) -> Result<usize, usize> {
        if let Some(k) = self.position(wire) {
            return Ok(k);
        }
        // Not an owner: where it would be.
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = low + (high - low) / 2;
            match compare_keys(self.owner(mid).name().wire(), wire) {
                Ordering::Less => low = mid + 1,
                Ordering::Greater => high = mid,
                Ordering::Equal => return Ok(mid),
            }
        }
        Err(low)
    }

    /// True when `wire` is a delegation point of the zone `origin`: an owner with NS records
    /// other than the apex.
    pub(crate) fn is_cut(&self, wire: &[u8], origin: &Name) -> bool {
        !wire.eq_ignore_ascii_case(origin.wire()) && self.find(wire).is_some_and(|o| o.has(rtype::NS))
    }

    /// The topmost delegation point strictly above `wire` and below the apex of `origin`: the
    /// cut that hides `wire`, if any.
    pub(crate) fn cut_above<'w>(&self, wire: &'w [u8], origin: &Name) -> Option<&'w [u8]> {
        ancestors(wire)
            .take_while(|a| !a.eq_ignore_ascii_case(origin.wire()))
            .filter(|a| self.is_cut(a, origin))
            .last()
    }

    /// The owner named `wire` (any case).
    pub(crate) fn find(&self, wire: &[u8]) -> Option<Owner<'_, 'a>> {
        self.position(wire).map(|k| self.owner(k))
    }
}

/// One owner name and its records (never none).
#[derive(Clone, Copy)]
pub(crate) struct Owner<'o, 'a> {
    owners: &'o Owners<'a>,
    items: &'o [u32],
}

impl<'o, 'a> Owner<'o, 'a> {
    pub(crate) fn name(&self) -> &'a Name {
        self.owners.item(self.items[0]).name
    }

    /// The record behind item `i`.
    pub(crate) fn item(&self, i: u32) -> RecordRef<'a> {
        self.owners.item(i)
    }

    /// (type, item numbers) of each RRset, in increasing type order.
    pub(crate) fn rrsets(&self) -> impl Iterator<Item = (u16, &'o [u32])> + use<'o, 'a> {
        let owners = self.owners;
        self.items
            .chunk_by(move |&a, &b| owners.item(a).rtype == owners.item(b).rtype)
            .map(move |items| (owners.item(items[0]).rtype, items))
    }

    /// The item numbers of the RRset of type `t`.
    pub(crate) fn get(&self, t: u16) -> Option<&'o [u32]> {
        self.rrsets()
            .find(|&(rtype, _)| rtype == t)
            .map(|(_, items)| items)
    }

    pub(crate) fn has(&self, t: u16) -> bool {
        self.get(t).is_some()
    }

    /// Number of RRsets.
    pub(crate) fn type_count(&self) -> usize {
        self.rrsets().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn records(text: &str) -> Vec<Record> {
        let origin = Name::parse("example.", None).expect("origin");
        super::super::master::parse_str(text, Path::new("z"), &origin).expect("zone text")
    }

    #[test]
    fn groups_by_owner_and_type_case_insensitively_in_file_order() {
        let records = records(
            "b 60 TXT \"b\"\nA 60 A 192.0.2.2\na 60 TXT \"a\"\na 60 A 192.0.2.1\n\
             @ 60 NS ns.example.net.\n",
        );
        let owners = Owners::new(&records, &[]);
        let names: Vec<String> = owners.iter().map(|o| o.name().to_string()).collect();
        // Wire order: a name's first label length comes first, so `a` (1) before the apex (7).
        assert_eq!(names, ["A.example.", "b.example.", "example."]);
        let a = owners.find(b"\x01a\x07example\x00").expect("a");
        let types: Vec<(u16, Vec<u32>)> = a.rrsets().map(|(t, i)| (t, i.to_vec())).collect();
        assert_eq!(types, [(rtype::A, vec![1, 3]), (rtype::TXT, vec![2])]);
        assert_eq!(a.type_count(), 2);
        assert!(a.has(rtype::TXT) && !a.has(rtype::NS));
        assert!(owners.find(b"\x01c\x07example\x00").is_none());
        assert_eq!(owners.search(b"\x01c\x07example\x00"), Err(2));
    }

    #[test]
    fn empty_zone_has_no_owners() {
        let owners = Owners::new(&[], &[]);
        assert_eq!(owners.len(), 0);
        assert_eq!(owners.search(b"\x00"), Err(0));
    }

    #[test]
    fn ancestors_are_suffixes_down_to_the_root() {
        let list: Vec<&[u8]> = ancestors(b"\x01a\x01b\x00").collect();
        assert_eq!(list, [&b"\x01b\x00"[..], &b"\x00"[..]]);
        assert_eq!(ancestors(b"\x00").count(), 0);
    }
}
