__version__ = "0.1.0"
from .configuration_sae import SaeConfig
from .modeling_sae import SaeModel, SaeOutput
from transformers import AutoConfig, AutoModel
AutoConfig.register("hf_sae", SaeConfig)
AutoModel.register(SaeConfig, SaeModel)
