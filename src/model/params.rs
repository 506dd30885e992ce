//! A module's parameters by their dotted names, listed and read out (`inspect`).

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::{Backend, Tensor, TensorData};

/// One float parameter of a module: its dotted path (`blocks.0.attn.c_attn.weight`), shape
/// and element type.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NamedParam {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

/// One float parameter with its values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamValues {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Every float parameter of `module`, in visiting order.
pub fn named_params<B: Backend, M: Module<B>>(module: &M) -> Vec<NamedParam> {
    let mut table =
        ParamTable { path: Vec::new(), params: Vec::new(), with_values: false, values: Vec::new() };
    module.visit(&mut table);
    table.params
}

/// Every float parameter of `module` with its values, in visiting order.
pub fn param_values<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamValues> {
    let mut table =
        ParamTable { path: Vec::new(), params: Vec::new(), with_values: true, values: Vec::new() };
    module.visit(&mut table);
    table
        .params
        .into_iter()
        .zip(table.values)
        .map(|(p, values)| ParamValues { name: p.name, shape: p.shape, values })
        .collect()
}

/// A tensor's values as f32, whatever float type the backend keeps them in.
pub fn f32_values(data: TensorData) -> Vec<f32> {
    data.convert::<f32>().into_vec().expect("data converted to f32 reads back as f32")
}

/// The dotted name of the parameter at `path` (Burn's containers add empty segments).
fn dotted(path: &[String]) -> String {
    path.iter().filter(|p| !p.is_empty()).cloned().collect::<Vec<_>>().join(".")
}

struct ParamTable {
    path: Vec<String>,
    params: Vec<NamedParam>,
    with_values: bool,
    /// One entry per parameter when `with_values`, else empty.
    values: Vec<Vec<f32>>,
}

impl<B: Backend> ModuleVisitor<B> for ParamTable {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        let (shape, dtype) = (tensor.dims().to_vec(), format!("{:?}", tensor.dtype()));
        if self.with_values {
            self.values.push(f32_values(tensor.into_data()));
        }
        self.params.push(NamedParam { name: dotted(&self.path), shape, dtype });
    }
}
