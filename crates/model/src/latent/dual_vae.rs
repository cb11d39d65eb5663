//! The frozen dual VAE that the diffusion stage works in: E2D from a stage-2 run, E3D and
//! D3D from the stage-1 run it records. Loaded once, never trained further.

use crate::batch::{Normalizer, TensorBatch};
use crate::error::ModelError;
use crate::run::checkpoint;
use crate::run::checkpoint::{BEST_FILE, LOG_FILE};
use crate::run::vae::{RunLog, Stage, VaeTarget};
use crate::vae::{Decoder, Encoder, VaeConfig};
use burn::prelude::*;
use fiberflow_data::json::read_json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// E2D, E3D and D3D with the normalisation they were trained with.
pub struct DualVae {
    pub e2d: Encoder,
    pub e3d: Encoder,
    pub d3d: Decoder,
    pub config: VaeConfig,
    /// Whether D3D gives U or the correction U − U_2d.
    pub target: VaeTarget,
    pub normalizer: Normalizer,
    /// The stage-2 and stage-1 run folders.
    pub stage2_dir: PathBuf,
    pub stage1_dir: PathBuf,
    /// SHA-256 of both best-model files and the normaliser: names the latent cache and is
    /// recorded by every diffusion run, so a retrained VAE is never mixed with old latents.
    pub key: String,
    /// The dataset manifest hash both stages were trained on.
    pub dataset_manifest_sha256: String,
}

impl DualVae {
    /// Loads the pair from a finished stage-2 run folder (which names its stage-1 run).
    pub fn load(stage2_dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let log2 = Self::stage2_log(stage2_dir)?;
        let stage1_dir = log2.stage1.clone().ok_or_else(|| {
            ModelError::Config(format!(
                "{}/log.json names no stage-1 run",
                stage2_dir.display()
            ))
        })?;
        Self::load_pair(stage2_dir, log2, stage1_dir, device)
    }

    /// The log of a stage-2 run folder; a stage-1 run is refused.
    pub fn stage2_log(stage2_dir: &Path) -> Result<RunLog, ModelError> {
        let log2: RunLog = read_json(
            &stage2_dir.join(LOG_FILE),
            "pass the folder of a stage-2 VAE run (fiberflow train vae --stage 2)",
        )?;
        if log2.stage != Stage::Two {
            return Err(ModelError::Config(format!(
                "{} is a stage-1 run; the diffusion model needs the stage-2 run (it records its stage 1)",
                stage2_dir.display()
            )));
        }
        Ok(log2)
    }

    /// Loads the pair from a stage-2 run folder (its parsed log `log2`) and the stage-1
    /// folder given explicitly: a model bundle keeps both in its own layout, away from the
    /// path the stage-2 log recorded at training time.
    pub fn load_pair(
        stage2_dir: &Path,
        log2: RunLog,
        stage1_dir: PathBuf,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let log1: RunLog = read_json(&stage1_dir.join(LOG_FILE), "the stage-1 run has moved")?;
        if log1.config.vae != log2.config.vae
            || log1.normalizer != log2.normalizer
            || log1.config.target != log2.config.target
        {
            return Err(ModelError::Config(format!(
                "{} and its stage 1 {} disagree on architecture or normalisation",
                stage2_dir.display(),
                stage1_dir.display()
            )));
        }
        let config = log2.config.vae.clone();
        let (best1, best2) = (stage1_dir.join(BEST_FILE), stage2_dir.join(BEST_FILE));
        let stage1 = checkpoint::load(config.init(device)?, &best1)?;
        let stage2 = checkpoint::load(config.init(device)?, &best2)?;
        let mut hasher = Sha256::new();
        for path in [&best1, &best2] {
            let bytes = std::fs::read(path).map_err(|e| ModelError::checkpoint(path, e))?;
            hasher.update(Sha256::digest(&bytes));
        }
        for f in log2.normalizer.factors {
            hasher.update(f.to_le_bytes());
        }
        Ok(Self {
            e2d: stage2.encoder.no_grad(),
            e3d: stage1.encoder.no_grad(),
            d3d: stage1.decoder.no_grad(),
            config,
            target: log2.config.target,
            normalizer: log2.normalizer,
            stage2_dir: checkpoint::absolute(stage2_dir),
            stage1_dir,
            key: format!("{:x}", hasher.finalize()),
            dataset_manifest_sha256: log2.dataset_manifest_sha256,
        })
    }

    fn geometry(&self, tb: &TensorBatch) -> Option<Tensor<5>> {
        (self.config.geometry_channels > 0).then(|| tb.geometry.clone())
    }

    /// μ of E3D(U) (or of E3D(U − U_2d)): the diffusion target x0.
    pub fn encode_3d(&self, tb: &TensorBatch) -> Tensor<5> {
        self.e3d.forward(self.target.field(tb), self.geometry(tb)).0
    }

    /// μ of E2D(U_2d): the diffusion condition.
    pub fn encode_2d(&self, tb: &TensorBatch) -> Tensor<5> {
        self.e2d.forward(tb.u2d.clone(), self.geometry(tb)).0
    }

    /// The 3D flow from D3D(z) (plus U_2d for a correction VAE), masked to zero in fibres
    /// and de-normalised to m/s.
    pub fn decode(&self, z: Tensor<5>, tb: &TensorBatch) -> Tensor<5> {
        self.decode_unmasked(z, tb) * tb.mask.clone()
    }

    /// [`Self::decode`] before masking: what the decoder puts in fibres too.
    pub fn decode_unmasked(&self, z: Tensor<5>, tb: &TensorBatch) -> Tensor<5> {
        let u = self.target.flow(self.d3d.forward(z, self.geometry(tb)), tb);
        self.normalizer.denormalize(u)
    }
}
