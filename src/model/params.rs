//! A module's parameters by their dotted names: listed, read out and loaded back (the
//! GPT-2 weight mapping of `import` and `export`, and `inspect`).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
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

/// `module` with every float parameter replaced by the entry of `values` of the same name.
/// Every parameter must have one, of its shape, and every entry must be used.
pub fn load_param_values<B: Backend, M: Module<B>>(
    module: M,
    values: HashMap<String, ParamValues>,
) -> Result<M, String> {
    let mut loader = ParamLoader { path: Vec::new(), values, problems: Vec::new() };
    let module = module.map(&mut loader);
    let mut unused: Vec<&String> = loader.values.keys().collect();
    unused.sort();
    if let Some(name) = unused.first() {
        loader.problems.push(format!(
            "tensor {name} has no place in the configured model ({} such)",
            unused.len()
        ));
    }
    match loader.problems.is_empty() {
        true => Ok(module),
        false => Err(loader.problems.join("; ")),
    }
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

struct ParamLoader {
    path: Vec<String>,
    values: HashMap<String, ParamValues>,
    problems: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for ParamLoader {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let name = dotted(&self.path);
        let want = param.val().dims().to_vec();
        match self.values.remove(&name) {
            None => self.problems.push(format!("no tensor for parameter {name} {want:?}")),
            Some(p) if p.shape != want => self.problems.push(format!(
                "parameter {name} has shape {:?} in the file but {want:?} in the model",
                p.shape
            )),
            Some(p) => {
                return param
                    .map(|t| Tensor::from_data(TensorData::new(p.values, p.shape), &t.device()));
            }
        }
        param
    }
}
