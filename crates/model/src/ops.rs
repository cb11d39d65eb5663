//! Tensor operations Burn lacks for 5-D `(B, C, S, H, W)` volumes.

use burn::prelude::*;
use burn::tensor::ops::PadMode;

/// Nearest-neighbour upsampling by an integer factor along H and W only (slices kept);
/// Burn's `interpolate` is 4-D only.
pub fn upsample_hw(x: Tensor<5>, factor: usize) -> Tensor<5> {
    let [b, c, s, h, w] = x.dims();
    x.reshape([b, c, s, h, 1, w, 1])
        .expand([b, c, s, h, factor, w, factor])
        .reshape([b, c, s, h * factor, w * factor])
}

/// Zero padding before a 3×3×3 convolution with stride (1, 2, 2): one slice on both sides
/// (slices preserved) and one row/column after, so the output is exactly H/2 × W/2 with
/// every input pixel in the same number of windows (no checkerboard).
pub fn pad_for_downsample(x: Tensor<5>) -> Tensor<5> {
    x.pad([(1, 1), (0, 1), (0, 1)], PadMode::Constant(0.0))
}

/// Mean over non-overlapping `factor`×`factor` blocks in H and W (slices kept); brings
/// full-resolution features to a coarser level. H and W must be multiples of `factor`.
pub fn avg_pool_hw(x: Tensor<5>, factor: usize) -> Tensor<5> {
    if factor == 1 {
        return x;
    }
    let [b, c, s, h, w] = x.dims();
    let (ho, wo) = (h / factor, w / factor);
    x.reshape([b, c, s, ho, factor, wo, factor])
        .mean_dims(&[4, 6])
        .reshape([b, c, s, ho, wo])
}

/// Folds each `p`×`p` block of H and W into channels: `(B, C, S, H, W)` →
/// `(B, C·p², S, H/p, W/p)`, channel `c·p² + i·p + j` holding pixel `(i, j)` of the block
/// (the inverse of the sub-pixel shuffle of Shi et al., "Real-Time Single Image and Video
/// Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network", CVPR
/// 2016). Lossless, so a network can start at a coarser grid without discarding detail.
pub fn space_to_depth(x: Tensor<5>, p: usize) -> Tensor<5> {
    if p == 1 {
        return x;
    }
    let [b, c, s, h, w] = x.dims();
    x.reshape([b, c, s, h / p, p, w / p, p])
        .permute([0, 1, 4, 6, 2, 3, 5])
        .reshape([b, c * p * p, s, h / p, w / p])
}

/// The inverse of [`space_to_depth`]: `(B, C·p², S, H, W)` → `(B, C, S, H·p, W·p)`.
pub fn depth_to_space(x: Tensor<5>, p: usize) -> Tensor<5> {
    if p == 1 {
        return x;
    }
    let [b, cp, s, h, w] = x.dims();
    let c = cp / (p * p);
    x.reshape([b, c, p, p, s, h, w])
        .permute([0, 1, 4, 5, 2, 6, 3])
        .reshape([b, c, s, h * p, w * p])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn pooling_averages_each_block_and_undoes_upsampling() {
        let dev = Device::flex();
        let x = Tensor::<5>::from_data(
            TensorData::new(
                (0..16).map(|v| v as f32).collect::<Vec<_>>(),
                [1, 1, 1, 4, 4],
            ),
            &dev,
        );
        let y: Vec<f32> = avg_pool_hw(x.clone(), 2)
            .into_data()
            .try_into_vec()
            .unwrap();
        // Block (0,0) holds 0, 1, 4, 5.
        assert_eq!(y, vec![2.5, 4.5, 10.5, 12.5]);
        let back: Vec<f32> = avg_pool_hw(upsample_hw(x.clone(), 2), 2)
            .into_data()
            .try_into_vec()
            .unwrap();
        let x: Vec<f32> = x.into_data().try_into_vec().unwrap();
        assert_eq!(back, x);
    }

    #[test]
    fn space_to_depth_moves_each_block_pixel_to_its_channel_and_back() {
        let dev = Device::flex();
        // One channel, one slice, 4×4 holding 0..16 row-major.
        let x = Tensor::<5>::from_data(
            TensorData::new(
                (0..16).map(|v| v as f32).collect::<Vec<_>>(),
                [1, 1, 1, 4, 4],
            ),
            &dev,
        );
        let y = space_to_depth(x.clone(), 2);
        assert_eq!(y.dims(), [1, 4, 1, 2, 2]);
        let v: Vec<f32> = y.clone().into_data().try_into_vec().unwrap();
        // Channel i·2 + j holds pixel (i, j) of each block: blocks start at 0, 2, 8, 10.
        assert_eq!(
            v,
            vec![
                0., 2., 8., 10., 1., 3., 9., 11., 4., 6., 12., 14., 5., 7., 13., 15.
            ]
        );
        let back: Vec<f32> = depth_to_space(y, 2).into_data().try_into_vec().unwrap();
        let x5 = Tensor::<5>::random([2, 3, 2, 6, 4], Distribution::Normal(0.0, 1.0), &dev);
        let round = depth_to_space(space_to_depth(x5.clone(), 2), 2);
        assert_eq!(back, (0..16).map(|v| v as f32).collect::<Vec<_>>());
        assert_eq!(round.into_data(), x5.into_data());
    }

    #[test]
    fn upsampling_repeats_each_pixel_in_a_block() {
        let dev = Device::flex();
        let x = Tensor::<5>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 1, 2, 2]),
            &dev,
        );
        let y: Vec<f32> = upsample_hw(x, 2).into_data().try_into_vec().unwrap();
        assert_eq!(
            y,
            vec![
                1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.
            ]
        );
    }

    #[test]
    fn upsampling_gradient_sums_each_block() {
        // d/dx Σ w·up(x) = Σ of w over the block each x was copied to.
        let dev = Device::flex().autodiff();
        let x = Tensor::<5>::random([1, 2, 3, 2, 2], Distribution::Normal(0.0, 1.0), &dev)
            .require_grad();
        let w = Tensor::<5>::random([1, 2, 3, 4, 4], Distribution::Normal(0.0, 1.0), &dev);
        let grads = (upsample_hw(x.clone(), 2) * w.clone()).sum().backward();
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().try_into_vec().unwrap();
        let w: Vec<f32> = w.into_data().try_into_vec().unwrap();
        for (i, gi) in g.iter().enumerate() {
            let (plane, rem) = (i / 4, i % 4);
            let (y, x) = (rem / 2, rem % 2);
            let mut expect = 0.0;
            for dy in 0..2 {
                for dx in 0..2 {
                    expect += w[plane * 16 + (2 * y + dy) * 4 + 2 * x + dx];
                }
            }
            assert!((gi - expect).abs() < 1e-5, "{i}: {gi} vs {expect}");
        }
    }

    #[test]
    fn padding_keeps_slices_and_halves_exactly() {
        let dev = Device::flex();
        let x = Tensor::<5>::ones([1, 1, 3, 8, 8], &dev);
        let p = pad_for_downsample(x);
        assert_eq!(p.dims(), [1, 1, 5, 9, 9]);
        // (9 − 3)/2 + 1 = 4 = 8/2 along H and W; (5 − 3)/1 + 1 = 3 slices.
        let v: Vec<f32> = p.into_data().try_into_vec().unwrap();
        assert_eq!(v[0], 0.0); // padded slice
        assert_eq!(v[81], 1.0); // first real slice, first pixel
        assert_eq!(v[81 + 8], 0.0); // padded column
    }
}
