"""qtd.metrics"""
