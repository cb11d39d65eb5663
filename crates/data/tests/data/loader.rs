//! Training loader: seeded per-epoch order, lazy and preloaded reads agree, batching,
//! deterministic augmentation.

use fiberflow_data::{Batch, Field, Loader, LoaderConfig, Mirror, SplitMode, Subset};

use crate::common::{dataset, sample};

fn epochs(loader: &Loader, epoch: u64) -> Vec<Batch> {
    loader.epoch(epoch).collect::<Result<_, _>>().unwrap()
}

fn order(batches: &[Batch]) -> Vec<usize> {
    batches.iter().flat_map(|b| b.indices.clone()).collect()
}

#[test]
fn same_seed_and_epoch_give_the_same_order_and_other_epochs_differ() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 20, SplitMode::Fiberflow);
    let config = LoaderConfig {
        batch_size: 3,
        seed: 11,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(&ds, Some(Subset::Train), config.clone()).unwrap();
    assert_eq!((loader.len(), loader.batches_per_epoch()), (14, 5));
    let a = order(&epochs(&loader, 0));
    assert_eq!(
        a,
        order(&epochs(
            &Loader::new(&ds, Some(Subset::Train), config.clone()).unwrap(),
            0
        ))
    );
    assert_ne!(a, order(&epochs(&loader, 1)));
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted, ds.splits.train,
        "an epoch visits every training sample once"
    );
    assert_ne!(a, ds.splits.train, "shuffled");

    let unshuffled = Loader::new(
        &ds,
        Some(Subset::Train),
        LoaderConfig {
            shuffle: false,
            ..config.clone()
        },
    )
    .unwrap();
    assert_eq!(order(&epochs(&unshuffled, 3)), ds.splits.train);

    let dropped = Loader::new(
        &ds,
        Some(Subset::Train),
        LoaderConfig {
            drop_last: true,
            ..config
        },
    )
    .unwrap();
    let batches = epochs(&dropped, 0);
    assert_eq!(batches.len(), 4);
    assert!(batches.iter().all(|b| b.samples.len() == 3));
}

#[test]
fn preloaded_and_lazy_batches_are_equal_and_stack() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 7, SplitMode::Fiberflow);
    let config = LoaderConfig {
        batch_size: 2,
        seed: 5,
        augment: Mirror {
            x: true,
            y: true,
            z: true,
        },
        ..LoaderConfig::default()
    };
    let lazy = Loader::new(&ds, None, config.clone()).unwrap();
    let preloaded = Loader::new(
        &ds,
        None,
        LoaderConfig {
            preload: true,
            ..config
        },
    )
    .unwrap();
    for epoch in 0..3 {
        let (a, b) = (epochs(&lazy, epoch), epochs(&preloaded, epoch));
        assert_eq!(a.len(), 4);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (&x.indices, &x.samples, &x.mirrors),
                (&y.indices, &y.samples, &y.mirrors)
            );
        }
    }
    let batches = epochs(&lazy, 0);
    let mirrors: Vec<Mirror> = batches.iter().flat_map(|b| b.mirrors.clone()).collect();
    assert!(
        mirrors.iter().any(|m| m.x || m.y || m.z),
        "augmentation is drawn"
    );
    assert!(
        mirrors.iter().any(|m| !(m.x && m.y && m.z)),
        "each mirror is drawn with p = 1/2"
    );
    // Each sample is its stored sample with the reported mirrors applied.
    for batch in &batches {
        for ((&i, s), &m) in batch.indices.iter().zip(&batch.samples).zip(&batch.mirrors) {
            let mut expected = sample(i);
            m.apply(&mut expected);
            assert_eq!(s, &expected);
        }
    }
    let u = batches[0].stack(Field::U).unwrap();
    assert_eq!(u.shape(), [2, 1, 3, 2, 2]);
    assert_eq!(batches[0].dxyz().shape(), [2, 3]);
    assert_eq!(batches[3].samples.len(), 1, "the last batch holds the rest");
}

#[test]
fn without_augmentation_samples_are_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 7, SplitMode::Fiberflow);
    let loader = Loader::new(&ds, Some(Subset::Test), LoaderConfig::default()).unwrap();
    for batch in epochs(&loader, 0) {
        assert_eq!(batch.samples[0], sample(batch.indices[0]));
        assert_eq!(batch.mirrors[0], Mirror::default());
    }
    let err = Loader::new(
        &ds,
        None,
        LoaderConfig {
            batch_size: 0,
            ..LoaderConfig::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("batch size"));
}
