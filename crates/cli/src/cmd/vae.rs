//! `fiberflow vae`: use a trained dual VAE — cache its latents for diffusion training,
//! or look at what it reconstructs.

use super::evaluate::SplitArg;
use crate::progress::Bar;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use fiberflow_data::json::read_json;
use fiberflow_data::{Batch, Dataset, Mirror};
use fiberflow_model::batch::{Normalizer, TensorBatch, sample_array, to_tensors};
use fiberflow_model::device::{Device, DeviceSpec};
use fiberflow_model::latent::{DualVae, encode_dataset};
use fiberflow_model::metrics::{ErrorSums, FieldErrors};
use fiberflow_model::run::checkpoint;
use fiberflow_model::run::checkpoint::{BEST_FILE, LOG_FILE};
use fiberflow_model::run::vae::{RunLog, Stage, VaeTarget};
use fiberflow_model::vae::{VaeBranch, VaeConfig};
use fiberflow_viz::ComparisonFigure;
use ndarray::Array4;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct VaeArgs {
    #[command(subcommand)]
    what: VaeWhat,
}

#[derive(Subcommand, Debug)]
enum VaeWhat {
    /// Write μ of E3D(U) and E2D(U_2d) for every sample into DATASET/latents/<vae key>/,
    /// so diffusion training never recomputes the frozen encoders. Resumes if interrupted.
    Encode(EncodeArgs),
    /// Draw truth vs reconstruction of one sample (stage 1: D3D(E3D(U)); stage 2:
    /// D3D(E2D(U_2d))) as a PNG and print its relative L2 errors.
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
struct EncodeArgs {
    /// A finished stage-2 VAE run folder (it names its stage-1 run).
    #[arg(long)]
    vae: PathBuf,
    #[arg(long)]
    dataset: PathBuf,
    /// `cpu`, `libtorch` or `libtorch-cuda:N` (a build by scripts/setup-libtorch.sh), or
    /// `cuda:N` (`--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// A stage-1 or stage-2 VAE run folder (its best weights are used).
    #[arg(long)]
    vae: PathBuf,
    #[arg(long)]
    dataset: PathBuf,
    /// Dataset index of the sample.
    #[arg(long, conflicts_with = "split")]
    index: Option<usize>,
    /// Or the first sample of this split (the default: val).
    #[arg(long, value_enum)]
    split: Option<SplitArg>,
    /// Slice drawn (default: the middle one).
    #[arg(long)]
    slice: Option<usize>,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// `cpu`, `libtorch` or `libtorch-cuda:N` (a build by scripts/setup-libtorch.sh), or
    /// `cuda:N` (`--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

pub fn run(a: VaeArgs) -> Result<()> {
    match a.what {
        VaeWhat::Encode(a) => encode(a),
        VaeWhat::Inspect(a) => inspect(a),
    }
}

fn encode(a: EncodeArgs) -> Result<()> {
    let device = a.device.open()?;
    let vae = DualVae::load(&a.vae, &device)?;
    let dataset = Dataset::open(&a.dataset)?;
    let cache = encode_dataset(&vae, &dataset, &device, &mut Bar::default())?;
    println!(
        "{} latents of shape {:?} -> {}",
        cache.meta.samples,
        cache.meta.latent_shape,
        cache.dir.display()
    );
    Ok(())
}

/// The reconstruction a VAE stage is trained for, from its run folder.
enum Reconstruction {
    /// D3D(E3D(U)) of a stage-1 run, with z = μ.
    Stage1 {
        branch: Box<VaeBranch>,
        config: VaeConfig,
        target: VaeTarget,
        normalizer: Normalizer,
    },
    /// D3D(E2D(U_2d)): stage 2's E2D with the D3D of the stage-1 run it names.
    Stage2(Box<DualVae>),
}

impl Reconstruction {
    /// The best weights of the stage-1 or stage-2 run in `run`, with its log.
    fn load(run: &Path, device: &Device) -> Result<(Self, RunLog)> {
        let log: RunLog = read_json(
            &run.join(LOG_FILE),
            "pass the folder of a VAE run (fiberflow train vae)",
        )?;
        let vae = match log.stage {
            Stage::One => Self::Stage1 {
                branch: Box::new(checkpoint::load(
                    log.config.vae.init(device)?,
                    &run.join(BEST_FILE),
                )?),
                config: log.config.vae.clone(),
                target: log.config.target,
                normalizer: log.normalizer,
            },
            Stage::Two => Self::Stage2(Box::new(DualVae::load(run, device)?)),
        };
        Ok((vae, log))
    }

    fn config(&self) -> &VaeConfig {
        match self {
            Self::Stage1 { config, .. } => config,
            Self::Stage2(vae) => &vae.config,
        }
    }

    fn normalizer(&self) -> &Normalizer {
        match self {
            Self::Stage1 { normalizer, .. } => normalizer,
            Self::Stage2(vae) => &vae.normalizer,
        }
    }

    fn formula(&self) -> &'static str {
        match self {
            Self::Stage1 { .. } => "D3D(E3D(U))",
            Self::Stage2(_) => "D3D(E2D(U_2d))",
        }
    }

    /// The reconstructed 3D flow of sample 0 of `tb` in m/s, zero in fibres, and its
    /// errors over normalised components (as the training log reports them).
    fn reconstruct(&self, tb: &TensorBatch) -> Result<(Array4<f32>, FieldErrors)> {
        let flow = match self {
            Self::Stage1 {
                branch,
                config,
                target,
                normalizer,
            } => {
                let geometry = (config.geometry_channels > 0).then(|| tb.geometry.clone());
                let (mu, _) = branch.encoder.forward(target.field(tb), geometry.clone());
                let u = target.flow(branch.decoder.forward(mu, geometry), tb);
                normalizer.denormalize(u) * tb.mask.clone()
            }
            Self::Stage2(vae) => vae.decode(vae.encode_2d(tb), tb),
        };
        let mut sums = ErrorSums::default();
        sums.add(
            self.normalizer().normalize(flow.clone()),
            tb.u.clone(),
            tb.mask.clone(),
        );
        Ok((sample_array(flow, 0)?, sums.errors()))
    }
}

fn inspect(a: InspectArgs) -> Result<()> {
    let device = a.device.open()?;
    let dataset = Dataset::open(&a.dataset)?;
    let index = match a.index {
        Some(i) => i,
        None => {
            let split = a.split.unwrap_or(SplitArg::Val);
            *dataset.indices(split.subset()).first().with_context(|| {
                format!("the {split:?} split of {} is empty", a.dataset.display())
            })?
        }
    };
    let sample = dataset.open_sample(index)?.load()?;
    let (slices, _, h, w) = sample.u.dim();
    let slice = a.slice.unwrap_or(slices / 2);
    if slice >= slices {
        bail!(
            "--slice {slice} does not exist: the sample has {slices} slices (0 to {})",
            slices - 1
        );
    }
    let (vae, log) = Reconstruction::load(&a.vae, &device)?;
    vae.config().check_input(h, w)?;
    if log.dataset_manifest_sha256 != dataset.manifest.sha256(&dataset.dir)? {
        println!(
            "note: {} was trained on another dataset ({})",
            a.vae.display(),
            log.dataset.display()
        );
    }
    let batch = Batch {
        indices: vec![index],
        samples: vec![sample],
        mirrors: vec![Mirror::default()],
    };
    let tb = to_tensors(&batch, vae.normalizer(), &device)?;
    let (prediction, e) = vae.reconstruct(&tb)?;
    let sample = &batch.samples[0];
    let figure = ComparisonFigure::new(
        dataset.manifest.header.voxel_size,
        sample.domain.view(),
        prediction.view(),
    )?
    .with_truth(sample.u.view())?
    .with_title(format!(
        "sample {index}: {} (VAE stage {})",
        vae.formula(),
        stage_number(log.stage)
    ));
    figure.write_png(slice, &a.out)?;
    println!(
        "sample {index}, {}: relative L2 error vx {:.3} vy {:.3} vz {:.3} (total {:.3}), vz ratio {:.3}; slice {slice} -> {}",
        vae.formula(),
        e.relative_l2[0],
        e.relative_l2[1],
        e.relative_l2[2],
        e.relative_l2_total_normalised,
        e.vz_ratio,
        a.out.display()
    );
    Ok(())
}

fn stage_number(stage: Stage) -> u8 {
    match stage {
        Stage::One => 1,
        Stage::Two => 2,
    }
}
