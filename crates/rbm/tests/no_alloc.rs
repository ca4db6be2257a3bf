//! The training loops allocate nothing per mini-batch: with 4× as many (smaller) batches per
//! epoch, an epoch makes as many heap allocations (its per-epoch work — shuffling, the team's
//! threads, the monitoring — stays the same). A counting global allocator sees every
//! allocation of this test binary, so everything runs in one test, one case after the other.

use rbm::Matrix;
use rbm::rating::{CdSchedule, EpochReport, RatingRbm, RatingRbmParams, TrainData};
use rbm::synthetic::{PlantedSpec, generate_planted};
use rbm::train::{Momentum, Optimizer, TrainParams, Trainer};
use std::alloc::{GlobalAlloc, Layout, System};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made during each epoch after the first (the first sizes the buffers).
fn per_epoch(counts: &[usize]) -> Vec<usize> {
    counts.windows(2).skip(1).map(|w| w[1] - w[0]).collect()
}

fn binary_epochs(data: &Matrix, batch: usize, persistent: bool, adam: bool) -> Vec<usize> {
    let mut cfg = TrainParams::new()
        .hidden(48)
        .epochs(5)
        .batch_size(batch)
        .lr(0.05)
        .cd_k(2)
        .persistent(persistent)
        .momentum(Momentum::constant(0.5))
        .monitor_examples(20);
    if adam {
        cfg = cfg.optimizer(Optimizer::adam());
    }
    let mut counts = vec![ALLOCATIONS.load(Ordering::Relaxed)];
    Trainer::fit_new(cfg.check().unwrap(), data, None, &mut |_, _| {
        counts.push(ALLOCATIONS.load(Ordering::Relaxed));
        ControlFlow::Continue(())
    })
    .unwrap();
    per_epoch(&counts)
}

fn rating_epochs(
    set: &rbm::synthetic::RatingSet,
    batch: usize,
    conditional: bool,
    adam: bool,
) -> Vec<usize> {
    let mut params = RatingRbmParams::new()
        .hidden(24)
        .epochs(7)
        .batch_size(batch)
        .cd(CdSchedule::constant(1))
        .conditional(conditional);
    if adam {
        params = params.optimizer(rbm::rating::Optimizer::Adam);
    }
    let params = params.check().unwrap();
    let data = TrainData::new(&set.by_user, set.n_items, &set.values);
    let mut counts = vec![ALLOCATIONS.load(Ordering::Relaxed)];
    RatingRbm::fit(&params, &data, &mut |_: &EpochReport| {
        counts.push(ALLOCATIONS.load(Ordering::Relaxed));
    })
    .unwrap();
    per_epoch(&counts)
}

#[test]
fn training_allocates_nothing_per_batch() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        // 400 binary-ish examples of 64 pixels: 4 batches of 100 or 16 of 25 per epoch.
        let data = Matrix::from_fn(64, 400, |i, j| ((i * 7 + j * 13) % 5 == 0) as u8 as f32);
        for (persistent, adam) in [(false, false), (true, false), (false, true)] {
            let few = binary_epochs(&data, 100, persistent, adam);
            let many = binary_epochs(&data, 25, persistent, adam);
            // 12 more batches per epoch: one allocation per batch would add 12.
            for (f, m) in few.iter().zip(&many) {
                assert!(
                    m.abs_diff(*f) <= 2,
                    "binary (pcd {persistent}, adam {adam}): {few:?} allocations per epoch \
                     with 4 batches, {many:?} with 16"
                );
            }
        }
        // 400 users: 4 batches of 100 or 16 of 25 per epoch.
        let set = generate_planted(&PlantedSpec {
            users: 400,
            items: 120,
            ratings: 8_000,
            rank: 3,
            seed: 5,
        })
        .unwrap();
        // The default (fused momentum step), the conditional RBM and Adam (unfused steps).
        for (conditional, adam) in [(false, false), (true, false), (false, true)] {
            let few = rating_epochs(&set, 100, conditional, adam);
            let many = rating_epochs(&set, 25, conditional, adam);
            // A batch with more ratings than any before grows the batch buffers (a few times,
            // in any epoch), so compare the quietest epochs.
            let (f, m) = (few.iter().min().unwrap(), many.iter().min().unwrap());
            assert!(
                m.abs_diff(*f) <= 2,
                "rating (conditional {conditional}, adam {adam}): {few:?} allocations per \
                 epoch with 4 batches, {many:?} with 16"
            );
        }
    });
}
