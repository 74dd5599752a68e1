"""Attribution of a model's outputs to hidden units: layer saliency (guided backprop) and neuron Shapley values."""
