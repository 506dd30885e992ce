//! The fixed sinusoidal position table of "Attention Is All You Need" (learned tables and
//! rotary embeddings are Burn's `Embedding` and `RotaryEncoding`).

/// The sinusoidal encoding of "Attention Is All You Need", `[len][d_model]`:
/// `PE[pos, 2i] = sin(pos / 10000^(2i / d_model))`, `PE[pos, 2i + 1] = cos(…)` (same angle).
/// Each pair of dimensions is a clock at its own frequency, from one turn per 2π positions
/// down to one per 10000·2π, so nearby positions get similar vectors.
pub fn sinusoidal_positions(len: usize, d_model: usize) -> Vec<Vec<f32>> {
    (0..len)
        .map(|pos| {
            (0..d_model)
                .map(|dim| {
                    let pair = (dim / 2 * 2) as f64;
                    let angle = pos as f64 / 10000f64.powf(pair / d_model as f64);
                    (if dim % 2 == 0 { angle.sin() } else { angle.cos() }) as f32
                })
                .collect()
        })
        .collect()
}

/// [`sinusoidal_positions`] as a `[len, d_model]` tensor.
pub(crate) fn sinusoid_table<B: burn::prelude::Backend>(
    len: usize,
    d_model: usize,
    device: &B::Device,
) -> burn::prelude::Tensor<B, 2> {
    let table: Vec<f32> = sinusoidal_positions(len, d_model).concat();
    burn::prelude::Tensor::from_data(burn::prelude::TensorData::new(table, [len, d_model]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoidal_values() {
        let pe = sinusoidal_positions(3, 4);
        assert_eq!(pe[0], vec![0.0, 1.0, 0.0, 1.0]);
        assert!((pe[1][0] - 1f32.sin()).abs() < 1e-6 && (pe[1][1] - 1f32.cos()).abs() < 1e-6);
        // Dimensions 2 and 3 turn 100 times slower with d_model 4 (10000^(2/4) = 100).
        assert!((pe[2][2] - 0.02f32.sin()).abs() < 1e-6 && (pe[2][3] - 0.02f32.cos()).abs() < 1e-6);
    }
}
