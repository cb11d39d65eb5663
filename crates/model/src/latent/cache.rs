//! The latent cache: μ of E3D(U) and of E2D(U_2d) for every sample, computed once per VAE
//! and stored next to the dataset, so diffusion training never runs the frozen encoders
//! (the reference recomputed them at every step, over 97 % of its training compute).
//!
//! Layout: `DATASET/latents/<key16>/meta.json` and one `NNNNNN.safetensors` per sample
//! with `mu3d` and `mu2d`, each `(Cz, S, h, w)` f32. `key16` is the start of the VAE key
//! ([`DualVae::key`]); a retrained VAE gets a new folder. Mirror augmentation adds
//! `NNNNNN-mK.safetensors` for the mirrored views of training samples (K =
//! [`Mirror::code`]). Files are written atomically, so an interrupted `encode` resumes
//! where it stopped.

use super::dual_vae::DualVae;
use crate::batch::to_tensors;
use crate::error::ModelError;
use burn::prelude::*;
use burn::tensor::TensorData;
use fiberflow_data::atomic::write_atomic;
use fiberflow_data::json::{read_json, write_json};
use fiberflow_data::{Batch, Dataset, Loader, LoaderConfig, Mirror, Progress};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a cache folder holds and which VAE made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheMeta {
    pub vae_key: String,
    pub stage2_dir: PathBuf,
    pub dataset_manifest_sha256: String,
    /// `(Cz, S, h, w)` of each latent.
    pub latent_shape: [usize; 4],
    pub samples: usize,
}

/// The two latents of one sample.
pub struct SampleLatents {
    pub mu3d: TensorData,
    pub mu2d: TensorData,
}

/// An opened, complete latent cache.
pub struct LatentCache {
    pub dir: PathBuf,
    pub meta: CacheMeta,
}

/// The cache folder of `vae` in `dataset_dir`.
pub fn cache_dir(dataset_dir: &Path, vae: &DualVae) -> PathBuf {
    dataset_dir.join("latents").join(&vae.key[..16])
}

fn sample_file(dir: &Path, index: usize) -> PathBuf {
    mirrored_file(dir, index, Mirror::default())
}

/// The file of sample `index` seen through `mirror`; the identity's has no suffix.
fn mirrored_file(dir: &Path, index: usize, mirror: Mirror) -> PathBuf {
    match mirror.code() {
        0 => dir.join(format!("{index:06}.safetensors")),
        code => dir.join(format!("{index:06}-m{code}.safetensors")),
    }
}

/// μ3d and μ2d of the one sample of `batch`.
fn encode_batch(
    vae: &DualVae,
    batch: &Batch,
    device: &Device,
) -> Result<SampleLatents, ModelError> {
    let tb = to_tensors(batch, &vae.normalizer, device)?;
    let squeeze = |t: Tensor<5>| t.squeeze_dim::<4>(0).into_data();
    Ok(SampleLatents {
        mu3d: squeeze(vae.encode_3d(&tb)),
        mu2d: squeeze(vae.encode_2d(&tb)),
    })
}

fn to_bytes(t: &TensorData) -> Result<Vec<u8>, ModelError> {
    let v: Vec<f32> = t
        .clone()
        .try_into_vec()
        .map_err(|e| ModelError::Input(format!("tensor is not f32: {e:?}")))?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// Writes named f32 tensors to a safetensors file, atomically (temp file + rename), so an
/// interrupted cache fill leaves whole files only.
pub(crate) fn write_tensors(
    path: &Path,
    tensors: &[(&str, &TensorData)],
) -> Result<(), ModelError> {
    let bytes = tensors
        .iter()
        .map(|(_, t)| to_bytes(t))
        .collect::<Result<Vec<_>, _>>()?;
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            TensorView::new(Dtype::F32, t.shape().to_vec(), b).map(|v| (*name, v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ModelError::checkpoint(path, e))?;
    let bytes = safetensors::serialize(views, None).map_err(|e| ModelError::checkpoint(path, e))?;
    Ok(write_atomic(path, &bytes)?)
}

/// Reads the f32 tensor `name` of the shape `shape` from a safetensors file written by
/// [`write_tensors`]; anything else (missing, truncated, another shape) is an error that
/// says to delete the cache.
pub(crate) fn read_tensor(
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<TensorData, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::checkpoint(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::checkpoint(path, e))?;
    let view = st
        .tensor(name)
        .map_err(|e| ModelError::checkpoint(path, e))?;
    if view.dtype() != Dtype::F32 || view.shape() != shape {
        return Err(ModelError::checkpoint(
            path,
            format!(
                "`{name}` is {:?} {:?}, expected F32 {shape:?}; delete the cache folder and compute it again",
                view.dtype(),
                view.shape(),
            ),
        ));
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(TensorData::new(values, shape.to_vec()))
}

fn write_sample(path: &Path, latents: &SampleLatents) -> Result<(), ModelError> {
    write_tensors(path, &[("mu3d", &latents.mu3d), ("mu2d", &latents.mu2d)])
}

/// Encodes every sample of the dataset that is not cached yet (all splits: evaluation
/// needs the test conditions too) and returns the complete cache.
pub fn encode_dataset(
    vae: &DualVae,
    dataset: &Dataset,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<LatentCache, ModelError> {
    let manifest_sha256 = dataset.manifest.sha256(&dataset.dir)?;
    if manifest_sha256 != vae.dataset_manifest_sha256 {
        return Err(ModelError::Config(format!(
            "the VAE {} was trained on another dataset (manifest {} ≠ {})",
            vae.stage2_dir.display(),
            vae.dataset_manifest_sha256,
            manifest_sha256
        )));
    }
    let shape = dataset.manifest.header.shape;
    vae.config.check_input(shape.height, shape.width)?;
    let f = vae.config.downsample_factor();
    let meta = CacheMeta {
        vae_key: vae.key.clone(),
        stage2_dir: vae.stage2_dir.clone(),
        dataset_manifest_sha256: manifest_sha256,
        latent_shape: [
            vae.config.latent_channels,
            shape.slices,
            shape.height / f,
            shape.width / f,
        ],
        samples: dataset.len(),
    };
    let dir = cache_dir(&dataset.dir, vae);
    std::fs::create_dir_all(&dir).map_err(|e| ModelError::checkpoint(&dir, e))?;
    write_json(&dir.join("meta.json"), &meta)?;
    let loader = Loader::new(dataset, None, LoaderConfig::sequential())?;
    progress.start("encoding latents", dataset.len() as u64);
    for batch in loader.epoch(0) {
        let batch = batch?;
        let path = sample_file(&dir, batch.indices[0]);
        if !path.exists() {
            write_sample(&path, &encode_batch(vae, &batch, device)?)?;
        }
        progress.step();
    }
    progress.finish();
    Ok(LatentCache { dir, meta })
}

impl LatentCache {
    /// The complete cache of `vae` for `dataset`, if one was written.
    pub fn open(dataset: &Dataset, vae: &DualVae) -> Result<Option<Self>, ModelError> {
        let dir = cache_dir(&dataset.dir, vae);
        let meta_path = dir.join("meta.json");
        if !meta_path.exists() {
            return Ok(None);
        }
        let meta: CacheMeta = read_json(&meta_path, "")?;
        let manifest_sha256 = dataset.manifest.sha256(&dataset.dir)?;
        if meta.dataset_manifest_sha256 != manifest_sha256 {
            return Err(ModelError::Config(format!(
                "{} changed since its latents in {} were encoded (manifest {} ≠ {}); the VAE was trained on the old data: retrain it on this dataset",
                dataset.dir.display(),
                dir.display(),
                meta.dataset_manifest_sha256,
                manifest_sha256
            )));
        }
        let complete = meta.vae_key == vae.key
            && meta.samples == dataset.len()
            && (0..dataset.len()).all(|i| sample_file(&dir, i).exists());
        Ok(complete.then_some(Self { dir, meta }))
    }

    /// Encodes the seven mirrored views of each of `indices` not cached yet, for mirror
    /// augmentation: the encoders are not equivariant, so a mirrored sample's latent is
    /// not the mirrored latent and must be encoded from the mirrored flow.
    pub fn encode_mirrors(
        &self,
        vae: &DualVae,
        dataset: &Dataset,
        indices: &[usize],
        device: &Device,
        progress: &mut dyn Progress,
    ) -> Result<(), ModelError> {
        progress.start("encoding mirrored latents", indices.len() as u64);
        for &i in indices {
            for mirror in Mirror::all().skip(1) {
                let path = mirrored_file(&self.dir, i, mirror);
                if path.exists() {
                    continue;
                }
                let mut sample = dataset.open_sample(i)?.load()?;
                mirror.apply(&mut sample);
                let batch = Batch {
                    indices: vec![i],
                    samples: vec![sample],
                    mirrors: vec![mirror],
                };
                write_sample(&path, &encode_batch(vae, &batch, device)?)?;
            }
            progress.step();
        }
        progress.finish();
        Ok(())
    }

    /// Both latents of sample `index`.
    pub fn load(&self, index: usize) -> Result<SampleLatents, ModelError> {
        self.load_mirrored(index, Mirror::default())
    }

    /// Both latents of sample `index` seen through `mirror` (encoded by
    /// [`LatentCache::encode_mirrors`] unless it is the identity).
    pub fn load_mirrored(&self, index: usize, mirror: Mirror) -> Result<SampleLatents, ModelError> {
        let path = mirrored_file(&self.dir, index, mirror);
        let shape = self.meta.latent_shape;
        Ok(SampleLatents {
            mu3d: read_tensor(&path, "mu3d", &shape)?,
            mu2d: read_tensor(&path, "mu2d", &shape)?,
        })
    }
}
