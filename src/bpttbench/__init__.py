"""bpttbench: measure how gradients vanish or explode in RNN, LSTM and GRU trained by BPTT."""

__version__ = "0.1.0"
