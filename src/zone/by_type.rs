//! The RRsets of one owner name, by type, while a zone is grouped for validation and for the
//! snapshot build.

/// Items by record type: a short vector kept sorted by type. Most names have one or two types;
/// a `BTreeMap` spends a whole node (about 300 B) on each name, which at 100,000 member names
/// was 30 MB of a load's peak; this spends one small allocation per name and type.
#[derive(Debug, Clone)]
pub(crate) struct ByType<T>(Vec<(u16, Vec<T>)>);

impl<T> Default for ByType<T> {
    fn default() -> Self {
        ByType(Vec::new())
    }
}

impl<T> ByType<T> {
    /// Adds `item` to the items of type `rtype`.
    pub(crate) fn push(&mut self, rtype: u16, item: T) {
        match self.0.binary_search_by_key(&rtype, |(t, _)| *t) {
            Ok(at) => self.0[at].1.push(item),
            Err(at) => {
                // Room for what is there only (`vec![item]` has capacity 1): most names have one
                // type and most RRsets one record.
                self.0.reserve_exact(1);
                self.0.insert(at, (rtype, vec![item]));
            }
        }
    }

    pub(crate) fn get(&self, rtype: &u16) -> Option<&Vec<T>> {
        self.0
            .binary_search_by_key(rtype, |(t, _)| *t)
            .ok()
            .map(|at| &self.0[at].1)
    }

    pub(crate) fn contains_key(&self, rtype: &u16) -> bool {
        self.get(rtype).is_some()
    }

    /// Number of types.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Item lists in increasing type order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Vec<T>> {
        self.0.iter().map(|(_, items)| items)
    }
}

/// (type, items) in increasing type order.
impl<'a, T> IntoIterator for &'a ByType<T> {
    type Item = (&'a u16, &'a Vec<T>);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (u16, Vec<T>)>, fn(&'a (u16, Vec<T>)) -> (&'a u16, &'a Vec<T>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(t, items)| (t, items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_types_sorted_and_items_in_order() {
        let mut types = ByType::default();
        types.push(28, "aaaa");
        types.push(1, "a1");
        types.push(1, "a2");
        types.push(16, "txt");
        let order: Vec<(u16, Vec<&str>)> = (&types).into_iter().map(|(t, v)| (*t, v.clone())).collect();
        assert_eq!(
            order,
            vec![(1, vec!["a1", "a2"]), (16, vec!["txt"]), (28, vec!["aaaa"])]
        );
        assert_eq!(types.len(), 3);
        assert!(types.contains_key(&16));
        assert!(types.get(&5).is_none());
    }
}
