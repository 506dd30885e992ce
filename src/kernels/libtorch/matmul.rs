//! A linear layer's three matrix products on libtorch's CPU, each through either of the two
//! libraries libtorch carries: MKL's SGEMM (libtorch's `matmul`) or oneDNN. tch binds no
//! oneDNN product of plain tensors, but a 1×1 convolution is one.
//!
//! Neither library is the faster everywhere: on an AMD Zen 3, MKL's SGEMM (which takes its
//! AVX2 code on AMD processors) beat oneDNN on most of `small.toml`'s products by 1.3–2.8×, and
//! lost some weight gradients by as much; on a Zen 5 oneDNN won most. [`super::autotune`]
//! times both for each shape on the machine at hand.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Where a product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Library {
    Mkl,
    #[serde(rename = "onednn")]
    OneDnn,
}

/// One of the products of a linear layer `y = x·W`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Product {
    /// `y = x · W`, from `x` and `W`.
    Forward,
    /// `dx = dy · Wᵀ`, from `dy` and `W`.
    InputGradient,
    /// `dW = xᵀ · dy`, from `x` and `dy`.
    WeightGradient,
}

/// The sides of a linear layer, and how its weight is laid out.
///
/// # Shapes
/// - `x`: `[rows, d_in]`, `W`: `[d_in, d_out]`, `dy`: `[rows, d_out]`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Shape {
    pub rows: i64,
    pub d_in: i64,
    pub d_out: i64,
    /// `W` is a transposed view of a `[d_out, d_in]` table (a head tied to the embedding).
    pub weight_transposed: bool,
}

impl Shape {
    /// The shape of a layer of input `x` and weight `weight`.
    pub fn of(x: &Tensor, weight: &Tensor) -> Option<Self> {
        let ((rows, d_in), (_, d_out)) = (x.size2().ok()?, weight.size2().ok()?);
        let weight_transposed = weight.stride().first() == Some(&1) && d_out > 1;
        Some(Self { rows, d_in, d_out, weight_transposed })
    }
}

impl Product {
    pub fn name(self) -> &'static str {
        match self {
            Product::Forward => "forward",
            Product::InputGradient => "input-gradient",
            Product::WeightGradient => "weight-gradient",
        }
    }

    /// The product of `a` and `b` (in the order [`Product`]'s variants name them) through
    /// `library`. Errors where oneDNN refuses (a libtorch built without it).
    pub fn compute(
        self,
        library: Library,
        a: &Tensor,
        b: &Tensor,
    ) -> Result<Tensor, tch::TchError> {
        match (self, library) {
            (Product::Forward, Library::Mkl) => a.f_matmul(b),
            (Product::Forward, Library::OneDnn) => onednn_matmul(a, &b.tr()),
            (Product::InputGradient, Library::Mkl) => a.f_matmul(&b.tr()),
            (Product::InputGradient, Library::OneDnn) => onednn_matmul(a, b),
            (Product::WeightGradient, Library::Mkl) => a.tr().f_matmul(b),
            (Product::WeightGradient, Library::OneDnn) => onednn_matmul_tn(a, b),
        }
    }

    /// Random operands of this product for a layer of `shape`, laid out as training lays
    /// them out, to time it.
    pub fn operands(self, shape: Shape) -> (Tensor, Tensor) {
        let random =
            |rows: i64, cols: i64| Tensor::randn([rows, cols], (Kind::Float, tch::Device::Cpu));
        let weight = match shape.weight_transposed {
            true => random(shape.d_out, shape.d_in).tr(),
            false => random(shape.d_in, shape.d_out),
        };
        match self {
            Product::Forward => (random(shape.rows, shape.d_in), weight),
            Product::InputGradient => (random(shape.rows, shape.d_out), weight),
            Product::WeightGradient => {
                (random(shape.rows, shape.d_in), random(shape.rows, shape.d_out))
            }
        }
    }
}

/// `a: [m, k]` · `filtersᵀ` for `filters: [n, k]` → `[m, n]`, as oneDNN's 1×1 convolution of
/// `a` read as one image of `m` pixels with `k` channels, stored channels-last (as `a` is),
/// through `n` filters.
fn onednn_matmul(a: &Tensor, filters: &Tensor) -> Result<Tensor, tch::TchError> {
    let (m, k) = a.size2()?;
    let (n, _) = filters.size2()?;
    let image = a.contiguous().reshape([1, 1, m, k]).permute([0, 3, 1, 2]);
    let y = one_by_one_convolution(&image, &filters.reshape([n, k, 1, 1]))?;
    Ok(y.permute([0, 2, 3, 1]).reshape([m, n]))
}

/// `aᵀ · b` for `a: [m, p]`, `b: [m, q]` → `[p, q]` through oneDNN: `b` read as one image of
/// `q` pixels with `m` channels (rows are channels) and `a`'s columns as `p` filters. oneDNN
/// runs this fastest with the narrower side as the filters, so the wider one is the image.
fn onednn_matmul_tn(a: &Tensor, b: &Tensor) -> Result<Tensor, tch::TchError> {
    let ((m, p), (_, q)) = (a.size2()?, b.size2()?);
    if p > q {
        return Ok(onednn_matmul_tn(b, a)?.tr());
    }
    let image = b.contiguous().reshape([1, m, 1, q]);
    Ok(one_by_one_convolution(&image, &a.tr().reshape([p, m, 1, 1]))?.reshape([p, q]))
}

/// oneDNN's convolution of `image: [1, channels, height, width]` with `filters:
/// [n, channels, 1, 1]` (no padding, stride or dilation).
fn one_by_one_convolution(image: &Tensor, filters: &Tensor) -> Result<Tensor, tch::TchError> {
    image.f_mkldnn_convolution(filters, None::<Tensor>, [0, 0], [1, 1], [1, 1], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both libraries against a plain product in f64, for each product, with the weight
    /// stored both ways and sides that are not multiples of any block size.
    #[test]
    fn both_libraries_compute_every_product() {
        for (rows, d_in, d_out) in [(1, 3, 2), (37, 19, 53), (300, 64, 7)] {
            for weight_transposed in [false, true] {
                let shape = Shape { rows, d_in, d_out, weight_transposed };
                for product in [Product::Forward, Product::InputGradient, Product::WeightGradient] {
                    let (a, b) = product.operands(shape);
                    let (a64, b64) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
                    let expected = match product {
                        Product::Forward => a64.matmul(&b64),
                        Product::InputGradient => a64.matmul(&b64.tr()),
                        Product::WeightGradient => a64.tr().matmul(&b64),
                    };
                    for library in [Library::Mkl, Library::OneDnn] {
                        let y = product.compute(library, &a, &b).expect("libtorch has oneDNN");
                        let diff =
                            (y.to_kind(Kind::Double) - &expected).abs().max().double_value(&[]);
                        assert!(diff < 1e-4, "{product:?} {library:?} {shape:?}: {diff}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_tied_heads_weight_is_seen_transposed() {
        let table = Tensor::zeros([65, 16], (Kind::Float, tch::Device::Cpu));
        let x = Tensor::zeros([8, 16], (Kind::Float, tch::Device::Cpu));
        let shape = Shape::of(&x, &table.tr()).expect("matrices");
        assert_eq!(
            (shape.rows, shape.d_in, shape.d_out, shape.weight_transposed),
            (8, 16, 65, true)
        );
        assert!(!Shape::of(&x, &table.tr().contiguous()).expect("matrices").weight_transposed);
    }
}
