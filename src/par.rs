//! Order-keeping parallel work on scoped threads: the pure, CPU-bound steps of bulk work
//! (decoding the index's rows, parsing a rebuild's or a bulk ingest's deliveries).

/// At most this many threads share one call.
const MAX_THREADS: usize = 8;

/// Runs `f` over `items` cut into one part per core (at most [`MAX_THREADS`]), each on a
/// scoped thread, and returns the parts' results in order. With fewer than `min` items
/// (or one core) it runs `f` once, on the calling thread. A part whose thread panicked
/// is run again on the calling thread, so that a panic is the caller's.
pub(crate) fn map_parts<T: Sync, R: Send>(
    items: &[T],
    min: usize,
    f: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS));
    if threads <= 1 || items.len() < min.max(2) {
        return vec![f(items)];
    }
    let per = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(per)
            .map(|part| (part, s.spawn(move || f(part))))
            .collect();
        parts
            .into_iter()
            .map(|(part, handle)| handle.join().unwrap_or_else(|_| f(part)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::map_parts;

    #[test]
    fn parts_come_back_in_order() {
        let items: Vec<u32> = (0..10_000).collect();
        let doubled: Vec<u32> = map_parts(&items, 16, |part| {
            part.iter().map(|i| i * 2).collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        // Below `min`: one part, on this thread.
        assert_eq!(map_parts(&items[..3], 16, <[u32]>::len), vec![3]);
    }
}
