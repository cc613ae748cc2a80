"""qtd.topology"""
