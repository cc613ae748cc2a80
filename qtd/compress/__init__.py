"""qtd.compress"""
