# qtd on the official PyTorch image (CUDA + cuDNN; gloo on CPU, nccl on GPUs). Build and run:
#   docker build -t qtd .
#   docker run --rm --gpus all --ipc=host -v "$PWD/runs:/opt/qtd/runs" qtd launch configs/quickstart.yaml
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /opt/qtd
COPY . .
# The same install as the README; torch, torchvision and numpy already come with the base image.
RUN pip install --no-cache-dir -e .
ENTRYPOINT ["qtd"]
CMD ["--help"]
