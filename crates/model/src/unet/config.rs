//! Denoiser configuration, validated before any layer is built.

use super::attention_spec::parse_attention;
use super::network::UNet;
use crate::error::ModelError;
use burn::prelude::*;

/// Architecture of the conditional denoiser over latents `(B, C, S, h, w)`. Defaults are
/// sized for a 2-core CPU; the reference project's widths are [`UNetConfig::reference`].
#[derive(Config, Debug, PartialEq)]
pub struct UNetConfig {
    /// Input channels: noisy latent ⊕ E2D condition latent ⊕ microstructure features
    /// (8 + 8 + 2), concatenated by the caller.
    #[config(default = 18)]
    pub in_channels: usize,
    /// Output channels: the predicted noise (or latent) of the 8-channel latent.
    #[config(default = 8)]
    pub out_channels: usize,
    /// Channels per resolution level; each level after the first halves h and w, so h and
    /// w must be divisible by 2^(levels − 1).
    #[config(default = "vec![32, 64, 128]")]
    pub features: Vec<usize>,
    /// Residual blocks per level (the reference's one `DoubleBlock` = one block).
    #[config(default = 1)]
    pub blocks_per_level: usize,
    /// GroupNorm groups; every width in `features` must be divisible by it.
    #[config(default = 8)]
    pub groups: usize,
    /// Width of the sinusoidal time code (even, ≥ 4).
    #[config(default = 64)]
    pub time_embedding_dim: usize,
    /// Width of the time MLP (4 × features[0], as in ADM; the reference used 256).
    #[config(default = 128)]
    pub time_mlp_dim: usize,
    /// `false` builds a plain conditional network with no time input, the "direct latent
    /// conditioner" baseline mapping condition → 3D latent in one evaluation.
    #[config(default = true)]
    pub time_conditioned: bool,
    /// Attention levels in the reference's `"start.end.heads"` grammar (1-indexed, empty
    /// end = last level, `""` = none); used in encoder, bottleneck and decoder alike.
    #[config(default = "String::from(\"3..2\")")]
    pub attention: String,
    /// Kernel extent along the slices (odd): 3 couples neighbouring slices, the point of
    /// fiberflow's denoiser; 1 gives independent slices like the reference.
    #[config(default = 3)]
    pub slice_kernel: usize,
    /// Dropout before each residual block's second convolution (active only when
    /// training on an autodiff device).
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl UNetConfig {
    /// The final U-Net of the reference (`Ruby-004/Diffusion_model_project`): widths
    /// 64…1024, 2-head attention on levels 3–5, time code 64 → MLP 256, one group per
    /// norm (layer-norm-like, as the reference). Its blocks are 3D (`slice_kernel` 3).
    pub fn reference() -> Self {
        Self::new()
            .with_features(vec![64, 128, 256, 512, 1024])
            .with_groups(1)
            .with_time_mlp_dim(256)
            .with_attention("3..2".into())
    }

    /// Number of resolution levels.
    pub fn levels(&self) -> usize {
        self.features.len()
    }

    /// Factor by which h and w shrink at the deepest level, 2^(levels − 1).
    pub fn downsample_factor(&self) -> usize {
        1 << self.levels().saturating_sub(1)
    }

    /// Attention heads per level (`None` = none), from `attention`.
    pub fn attention_heads(&self) -> Result<Vec<Option<usize>>, ModelError> {
        parse_attention(&self.attention, self.levels())
    }

    /// Checks every dimension rule, naming the field that breaks it.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.in_channels == 0 || self.out_channels == 0 {
            return bad("in_channels and out_channels must be ≥ 1".into());
        }
        if self.features.is_empty() || self.features.contains(&0) {
            return bad(format!(
                "features = {:?} must be non-empty and positive",
                self.features
            ));
        }
        if self.groups == 0 {
            return bad("groups must be ≥ 1".into());
        }
        if let Some(c) = self.features.iter().find(|&&c| c % self.groups != 0) {
            return bad(format!(
                "width {c} in features = {:?} is not divisible by groups = {}",
                self.features, self.groups
            ));
        }
        if self.blocks_per_level == 0 {
            return bad("blocks_per_level must be ≥ 1".into());
        }
        if self.time_conditioned {
            if self.time_embedding_dim < 4 || !self.time_embedding_dim.is_multiple_of(2) {
                return bad(format!(
                    "time_embedding_dim = {} must be even and ≥ 4 (half sines, half cosines, \
                     frequencies spread over half − 1 steps)",
                    self.time_embedding_dim
                ));
            }
            if self.time_mlp_dim == 0 {
                return bad("time_mlp_dim must be ≥ 1".into());
            }
        }
        for (level, heads) in self.attention_heads()?.into_iter().enumerate() {
            let c = self.features[level];
            if let Some(n) = heads.filter(|&n| !c.is_multiple_of(n)) {
                return bad(format!(
                    "attention = \"{}\": {n} heads do not divide the {c} channels of level {}",
                    self.attention,
                    level + 1
                ));
            }
        }
        if self.slice_kernel.is_multiple_of(2) {
            return bad(format!(
                "slice_kernel = {} must be odd (symmetric padding keeps every slice in place)",
                self.slice_kernel
            ));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return bad(format!("dropout = {} must lie in [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// Checks that an input of dims `(B, C, S, h, w)` fits: C = `in_channels`, nothing
    /// empty, and h, w divisible by 2^(levels − 1).
    pub fn check_input(&self, dims: [usize; 5]) -> Result<(), ModelError> {
        let [b, c, s, h, w] = dims;
        let bad = |m: String| Err(ModelError::Input(m));
        if c != self.in_channels {
            return bad(format!(
                "input has {c} channels, the denoiser expects in_channels = {}",
                self.in_channels
            ));
        }
        if b == 0 || s == 0 || h == 0 || w == 0 {
            return bad(format!("input dims {dims:?} contain an empty axis"));
        }
        let f = self.downsample_factor();
        if !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return bad(format!(
                "h × w = {h} × {w} is not divisible by 2^(levels − 1) = {f} of features = {:?}",
                self.features
            ));
        }
        Ok(())
    }

    /// Builds the denoiser on `device` after validating the configuration.
    pub fn init(&self, device: &Device) -> Result<UNet, ModelError> {
        self.validate()?;
        Ok(UNet::new(self, &self.attention_heads()?, device))
    }
}
