//! Model definitions, generic over `B: Backend`.

mod attention;
mod gpt;
mod mlp;

pub use attention::{CausalSelfAttention, LayerCache};
pub use gpt::{Gpt, GptConfig, GptRecord, KvCache, ParamCounts};
pub use mlp::Mlp;

use burn::module::Initializer;

/// GPT-2 / nanoGPT initialisation: N(0, std).
pub(crate) fn normal(std: f64) -> Initializer {
    Initializer::Normal { mean: 0.0, std }
}

/// One float parameter of a module: its dotted path (`blocks.0.attn.c_attn.weight`), shape
/// and element type.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NamedParam {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

/// Every float parameter of `module`, in visiting order.
pub fn named_params<B: burn::prelude::Backend, M: burn::module::Module<B>>(module: &M) -> Vec<NamedParam> {
    let mut table = ParamTable { path: Vec::new(), params: Vec::new() };
    module.visit(&mut table);
    table.params
}

struct ParamTable {
    path: Vec<String>,
    params: Vec<NamedParam>,
}

impl<B: burn::prelude::Backend> burn::module::ModuleVisitor<B> for ParamTable {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::prelude::Tensor<B, D>>) {
        let tensor = param.val();
        let name = self.path.iter().filter(|p| !p.is_empty()).cloned().collect::<Vec<_>>().join(".");
        self.params.push(NamedParam { name, shape: tensor.dims().to_vec(), dtype: format!("{:?}", tensor.dtype()) });
    }
}
