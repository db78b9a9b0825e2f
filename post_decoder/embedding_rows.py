"""New rows for a Llama checkpoint's added tokens (`<image>`, `<pad>`), drawn as LLaVA's official conversion draws
them: LLaVA-1.5's converter and MiniGPT-4's both add them."""

import torch
from torch.distributions import MultivariateNormal

CONVERSION_SEED = 0
ADDED_ROW_COVARIANCE_SCALE = 1e-5  # the official script's: new rows sit close to the embeddings' mean
PAD_ROWS_TO = 64


def add_image_and_pad_rows(model, text_vocab: int):
    """Grow the embeddings and lm_head from `text_vocab` rows to `text_vocab + 2` (`<image>`, `<pad>`)
    rounded up to a multiple of 64; every new row of both is drawn from N(mu, 1e-5 * Sigma), with
    mu and Sigma the mean and covariance of the embedding rows, as the official conversion draws them."""
    embeddings = model.get_input_embeddings().weight.detach().float()
    mean = embeddings.mean(dim=0)
    centred = embeddings - mean
    covariance = centred.T @ centred / embeddings.shape[0]
    distribution = MultivariateNormal(mean, covariance_matrix=ADDED_ROW_COVARIANCE_SCALE * covariance)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(CONVERSION_SEED)
        # mean_resizing=False: the new rows are drawn below (transformers' own draw uses each matrix's statistics)
        model.resize_token_embeddings(text_vocab + 2, pad_to_multiple_of=PAD_ROWS_TO, mean_resizing=False)
        for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            matrix[text_vocab:] = distribution.sample((matrix.shape[0] - text_vocab,)).to(matrix.dtype)
