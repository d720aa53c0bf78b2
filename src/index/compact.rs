//! The compact storage of the index: interned ids, value tables, instants as
//! microseconds, the fixed-size grant and subscription records.

use super::*;

pub(super) const NIL: u32 = u32::MAX;

/// A handle as an index (handles are dense `u32`s).
pub(super) fn at(handle: u32) -> usize {
    handle as usize
}

/// The next dense handle for a table of `len` values.
pub(super) fn handle(len: usize) -> u32 {
    // More than 4 G distinct ids, grants or values: the index cannot hold them (nor the
    // memory of the machine it runs on).
    u32::try_from(len)
        .ok()
        .filter(|h| *h != NIL)
        .unwrap_or_else(|| panic!("index: more than {} entries in one table", NIL))
}

pub(super) const CHUNK_BITS: u32 = 12;
pub(super) const CHUNK: usize = 1 << CHUNK_BITS;

/// A vector in fixed chunks: no doubling, so no up-to-2× slack at scale and no copying
/// of millions of records when it grows.
#[derive(Debug)]
pub(super) struct Chunked<T> {
    pub(super) chunks: Vec<Vec<T>>,
    pub(super) len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn push(&mut self, value: T) -> u32 {
        let h = handle(self.len);
        match self.chunks.last_mut() {
            // The first chunk grows as a `Vec` does (an index of a few rows, as the
            // change feed builds per delivery, stays small); the others are allocated
            // whole.
            Some(chunk) if chunk.len() < CHUNK => chunk.push(value),
            Some(_) => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(value);
                self.chunks.push(chunk);
            }
            None => self.chunks.push(vec![value]),
        }
        self.len += 1;
        h
    }

    pub(super) fn get(&self, h: u32) -> &T {
        &self.chunks[at(h >> CHUNK_BITS)][at(h) & (CHUNK - 1)]
    }

    pub(super) fn get_mut(&mut self, h: u32) -> &mut T {
        &mut self.chunks[at(h >> CHUNK_BITS)][at(h) & (CHUNK - 1)]
    }
}

/// Where an interned string's bytes are.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    pub(super) chunk: u32,
    pub(super) start: u32,
    pub(super) len: u32,
}

/// Bytes per chunk of interned strings (a longer string gets a chunk of its own).
pub(super) const TEXT_CHUNK: usize = 1 << 16;

/// Strings -> dense `u32` handles and back. The bytes live in shared chunks; the hash
/// table holds only handles (4 bytes and a control byte per slot).
#[derive(Debug, Default)]
pub(super) struct Interner {
    pub(super) table: HashTable<u32>,
    pub(super) spans: Chunked<Span>,
    pub(super) text: Vec<String>,
    pub(super) hasher: DefaultHashBuilder,
}

impl Interner {
    pub(super) fn get(&self, h: u32) -> &str {
        let s = self.spans.get(h);
        let start = at(s.start);
        &self.text[at(s.chunk)][start..start + at(s.len)]
    }

    pub(super) fn find(&self, s: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(s);
        self.table.find(hash, |&h| self.get(h) == s).copied()
    }

    pub(super) fn intern(&mut self, s: &str) -> u32 {
        let hash = self.hasher.hash_one(s);
        if let Some(&h) = self.table.find(hash, |&h| self.get(h) == s) {
            return h;
        }
        // As for `Chunked`, the first chunk grows as a `String` does (to about
        // `TEXT_CHUNK`), the others are allocated whole.
        let fits = match self.text.last() {
            Some(t) if self.text.len() == 1 => t.len() + s.len() <= TEXT_CHUNK,
            Some(t) => t.capacity() - t.len() >= s.len(),
            None => false,
        };
        if !fits {
            let capacity = if self.text.is_empty() {
                s.len()
            } else {
                TEXT_CHUNK.max(s.len())
            };
            self.text.push(String::with_capacity(capacity));
        }
        let chunk = self.text.len() - 1;
        let text = &mut self.text[chunk];
        let start = text.len();
        text.push_str(s);
        let span = Span {
            chunk: handle(chunk),
            start: handle(start),
            len: handle(s.len()),
        };
        let h = self.spans.push(span);
        let (spans, text, hasher) = (&self.spans, &self.text, &self.hasher);
        self.table.insert_unique(hash, h, |&h| {
            let s = spans.get(h);
            let start = at(s.start);
            hasher.hash_one(&text[at(s.chunk)][start..start + at(s.len)])
        });
        h
    }
}

/// The distinct values of a small open set (statuses, reasons, error codes): each gets
/// a handle, and its exact value back.
#[derive(Debug)]
pub(super) struct Values<T> {
    pub(super) values: Vec<T>,
    pub(super) handles: HashMap<T, u32>,
}

impl<T> Default for Values<T> {
    fn default() -> Self {
        Values {
            values: Vec::new(),
            handles: HashMap::default(),
        }
    }
}

impl<T: Clone + Eq + Hash> Values<T> {
    pub(super) fn handle<Q>(&mut self, value: &Q) -> u32
    where
        T: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized + ToOwned<Owned = T>,
    {
        if let Some(&h) = self.handles.get(value) {
            return h;
        }
        let h = handle(self.values.len());
        self.values.push(value.to_owned());
        self.handles.insert(value.to_owned(), h);
        h
    }

    pub(super) fn get(&self, h: u32) -> &T {
        &self.values[at(h)]
    }

    pub(super) fn opt(&self, h: u32) -> Option<&T> {
        (h != NIL).then(|| self.get(h))
    }
}

/// An instant in 8 bytes: `2 × µs since the epoch` when it has no digits below the
/// microsecond (every instant Dodo sends), `2 × i + 1` for the `i`th exact instant of
/// [`Instants`] otherwise; [`Instant::NONE`] for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Instant(pub(super) i64);

impl Instant {
    pub(super) const NONE: Instant = Instant(i64::MIN);
}

/// The instants that microseconds do not hold exactly (nanoseconds, leap seconds).
#[derive(Debug, Default)]
pub(super) struct Instants {
    pub(super) exact: Values<Timestamp>,
}

impl Instants {
    pub(super) fn encode(&mut self, t: Timestamp) -> Instant {
        let nanos = t.timestamp_subsec_nanos();
        if nanos % 1000 == 0 && nanos < 1_000_000_000 {
            // Years 1..=9999 (all `parse_timestamp` accepts) are far inside ±2^62 µs.
            Instant(t.timestamp_micros() << 1)
        } else {
            Instant((i64::from(self.exact.handle(&t)) << 1) | 1)
        }
    }

    pub(super) fn encode_opt(&mut self, t: Option<Timestamp>) -> Instant {
        t.map_or(Instant::NONE, |t| self.encode(t))
    }

    pub(super) fn get(&self, i: Instant) -> Option<Timestamp> {
        if i == Instant::NONE {
            None
        } else if i.0 & 1 == 0 {
            chrono::DateTime::from_timestamp_micros(i.0 >> 1)
        } else {
            self.exact
                .values
                .get(usize::try_from(i.0 >> 1).ok()?)
                .copied()
        }
    }

    pub(super) fn must(&self, i: Instant) -> Timestamp {
        self.get(i).unwrap_or_default()
    }
}

/// What the index keeps of a grant (56 bytes). Its handle is its grant id's.
#[derive(Debug, Clone, Copy)]
pub(super) struct GrantRec {
    pub(super) version: Instant,
    pub(super) revoked_at: Instant,
    pub(super) expires_at: Instant,
    /// Customer and entitlement handles (in `names`).
    pub(super) customer: u32,
    pub(super) entitlement: u32,
    /// The pair's next grant, or [`NIL`].
    pub(super) next: u32,
    /// Subscription handle, or [`NIL`].
    pub(super) subscription: u32,
    /// Payment handle, or [`NIL`].
    pub(super) payment: u32,
    /// Handles in `statuses`, `reasons`, `error_codes` ([`NIL`]: none).
    pub(super) status: u32,
    pub(super) reason: u32,
    pub(super) error_code: u32,
}

/// What the index keeps of a subscription (24 bytes), by subscription handle.
#[derive(Debug, Clone, Copy)]
pub(super) struct SubRec {
    /// Handle in `sub_statuses`, or [`NIL`] while no snapshot of it is known.
    pub(super) status: u32,
    pub(super) as_of: Instant,
    pub(super) since: Instant,
}

pub(super) const UNKNOWN_SUB: SubRec = SubRec {
    status: NIL,
    as_of: Instant::NONE,
    since: Instant::NONE,
};
